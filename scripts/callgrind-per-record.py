#!/usr/bin/env python3
# Instructions per ACKed record from two callgrind profiles of the same server under the same workload at
# two sizes (scripts/bench-instructions.sh): the difference cancels start-up, shutdown and warm-up.
# Prints the totals, instructions per record, what is left once (start-up), then the functions that
# cost the most per record (self, and with INCLUSIVE=1 inclusive), names through `swift demangle`.
# Usage: scripts/callgrind-per-record.py SMALL.out SMALL_RECORDS LARGE.out LARGE_RECORDS [TOP]
import os, re, subprocess, sys

LINE = re.compile(r'^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(?: \[[^]]*\])?$')


def profile(path, inclusive):
    """Total instructions and {function: instructions} (self, or inclusive) of a callgrind output."""
    args = ['callgrind_annotate', '--threshold=100', f'--inclusive={"yes" if inclusive else "no"}', path]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    total, functions = None, {}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        count, name = int(m.group(1).replace(',', '')), m.group(2).replace('???:', '')
        if name == 'PROGRAM TOTALS':
            total = count
        else:
            functions[name] = functions.get(name, 0) + count
    return total, functions


def demangle(names):
    out = subprocess.run(['swift', 'demangle', '--simplified'], input='\n'.join(names), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    return lines if out.returncode == 0 and len(lines) == len(names) else names


def table(title, small, large, records, top):
    rows = sorted(((large.get(f, 0) - small.get(f, 0)) / records, f) for f in set(small) | set(large))[::-1][:top]
    print(f'\n{title} (instructions per record; the larger run minus the smaller):')
    for (per_record, _), name in zip(rows, demangle([f for _, f in rows])):
        print(f'{per_record:10.1f}  {name[:150]}')


def main():
    small_path, small_records, large_path, large_records = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    small_total, small_self = profile(small_path, False)
    large_total, large_self = profile(large_path, False)
    records = large_records - small_records
    per_record = (large_total - small_total) / records
    print(f'instructions: {small_total:,} for {small_records:,} records, {large_total:,} for {large_records:,}')
    print(f'instructions per ACKed record: {per_record:,.0f}')
    if os.environ.get('BENCH_SUMMARY'):  # the summary table of `make bench` (scripts/bench.sh)
        with open(os.environ['BENCH_SUMMARY'], 'a') as out:
            out.write(f'server instructions per ACKed record (callgrind)\t{per_record:,.0f}\n')
    print(f'once (start-up, shutdown, warm-up): {small_total - per_record * small_records:,.0f}')
    table('Self', small_self, large_self, records, top)
    if len(sys.argv) > 6 and sys.argv[6] == 'inclusive':
        table('Inclusive', profile(small_path, True)[1], profile(large_path, True)[1], records, top)


main()
