// libFuzzer target over the PROXY v2 header parser (Sources/Ingest/Proxy/ProxyHeader.swift).
//
// Built by scripts/fuzz.sh together with that one file into ONE module (the parser is pure: no NIO, no
// Foundation). Every invariant violation is a `fatalError`, which libFuzzer reports as a crash.
//
// Per input, with a maximum header size taken from the input (the default 1024, or a small one so that
// ordinary headers hit `tooLarge`):
//  1. The whole input, and prefixes around the point of decision, each copied to an exact-size heap block
//     (AddressSanitizer sees any read past the end).
//  2. Prefix stability: below some length every prefix needs more; from there on every longer input gets the
//     same answer (a header, not-proxy, or the same error). A header never claims more bytes than it was
//     given, less than 16, or more than the maximum, and its length is 16 + the length field.
//  3. A header is re-encoded from what the parser returned (signature, version 2, command, family, length,
//     source address and port) and compared with the input's bytes.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size >= 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: UnsafeRawPointer(data), count: size)
    let maximum = size > 0 && input[size - 1] & 0x07 == 0 ? 16 + Int(input[size - 1] >> 3) : ProxyHeader.defaultMaximumBytes
    let whole = outcome(input, count: size, maximum: maximum)
    // The shortest prefix that decides, found by bisection (prefix answers are monotone: needMore, then fixed).
    var low = 0
    var high = size
    if case .parsed(.needMore) = whole {
        low = size
    } else {
        while low < high {
            let mid = (low + high) / 2
            if case .parsed(.needMore) = outcome(input, count: mid, maximum: maximum) { low = mid + 1 } else { high = mid }
        }
    }
    for count in [low - 1, low, low + 1, size - 1, size / 2] where count >= 0 && count <= size {
        let partial = outcome(input, count: count, maximum: maximum)
        if count < low {
            check(partial == .parsed(.needMore), "prefix \(count) of \(size) decided (\(partial)) before \(low)")
        } else {
            check(partial == whole, "prefix \(count) of \(size) gives \(partial), the whole input \(whole)")
        }
    }
    if case .parsed(.header(let header)) = whole {
        check(header.byteCount >= 16 && header.byteCount <= size && header.byteCount <= maximum, "header of \(header.byteCount) bytes")
        check(header.byteCount == 16 + (Int(input[14]) << 8 | Int(input[15])), "header length \(header.byteCount) against its field")
        check(low == header.byteCount, "decided at \(low), header of \(header.byteCount)")
        reencode(header, against: input)
    }
    if case .failed(.tooLarge(let declared, let limit)) = whole {
        check(declared > limit && limit == maximum && low == 16, "too large \(declared)/\(limit) decided at \(low)")
    }
    return 0
}

enum Outcome: Equatable {
    case parsed(ProxyHeader.Parsed)
    case failed(ProxyHeader.ParseError)
}

/// The parser on the first `count` bytes, copied to a heap block of exactly that size.
func outcome(_ input: UnsafeRawBufferPointer, count: Int, maximum: Int) -> Outcome {
    let block = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
    defer { block.deallocate() }
    if count > 0 { block.copyMemory(from: UnsafeRawBufferPointer(rebasing: input[0..<count])) }
    do throws(ProxyHeader.ParseError) {
        return .parsed(try ProxyHeader.parse(UnsafeRawBufferPointer(block), maximumBytes: maximum))
    } catch {
        return .failed(error)
    }
}

/// The fixed part and the source address written again from the parsed value must be the input's bytes.
func reencode(_ header: ProxyHeader, against input: UnsafeRawBufferPointer) {
    var expected = ProxyHeader.signature
    expected.append(header.command == .local ? 0x20 : 0x21)
    check(Array(input[0..<13]) == expected, "signature or version/command \(Array(input[0..<13]))")
    guard header.command == .proxy else {
        check(header.source == nil, "LOCAL with a source")
        return
    }
    switch header.source {
    case nil:
        check(input[13] == 0x00, "no source for family \(input[13])")
    case .ipv4(let address, let port):
        check(input[13] == 0x11, "IPv4 source for family \(input[13])")
        let bytes = [UInt8(address >> 24), UInt8(address >> 16 & 0xFF), UInt8(address >> 8 & 0xFF), UInt8(address & 0xFF)]
        check(Array(input[16..<20]) == bytes && Array(input[24..<26]) == [UInt8(port >> 8), UInt8(port & 0xFF)], "IPv4 source")
        check(header.source?.addressText == bytes.map { String($0) }.joined(separator: "."), "IPv4 text")
    case .ipv6(let high, let low, let port):
        check(input[13] == 0x21, "IPv6 source for family \(input[13])")
        let bytes = (0..<16).map { i in UInt8(truncatingIfNeeded: (i < 8 ? high : low) >> (56 - 8 * UInt64(i % 8))) }
        check(Array(input[16..<32]) == bytes && Array(input[48..<50]) == [UInt8(port >> 8), UInt8(port & 0xFF)], "IPv6 source")
        let text = header.source!.addressText
        check(text.split(separator: ":", omittingEmptySubsequences: false).count <= 8 && !text.contains(":::"), "IPv6 text \(text)")
    }
}

@inline(never)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("fuzz invariant violated: \(message())") }
}
