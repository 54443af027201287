#!/usr/bin/env python3
"""The structural checks of scripts/check-deploy.sh (alerts, k8s manifest, systemd unit, dashboard).

The first argument picks the check. Output on success is a one-line note; on failure, one line per
problem and exit 1. Needs PyYAML (installed by scripts/deps.sh).
"""
import configparser, json, os, re, subprocess, sys, unicodedata
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHUTDOWN_TIMEOUT_MS_DEFAULT = 30000
ALERTS = ["TeltonikaUnknownCodec", "TeltonikaPublishOverflow", "TeltonikaCRCFailureRatio",
          "TeltonikaPublishQueueFilling", "TeltonikaRedisDown", "TeltonikaNotReady",
          "TeltonikaAckLatencyHigh", "TeltonikaInstanceSilent", "TeltonikaCrashLoop",
          "TeltonikaRedisNotDurable", "TeltonikaRedisReplicasShort", "TeltonikaPacketsGivenUp",
          "TeltonikaRedisRefusingWrites", "TeltonikaStreamUnreadNearTrim", "TeltonikaRedisMemoryNearLimit", "TeltonikaAllowlistStale",
          "TeltonikaInstanceDown", "TeltonikaAbsent", "TeltonikaFewReady", "TeltonikaPodCrashLooping", "TeltonikaAckRatioLow",
          "TeltonikaFleetDropped", "TeltonikaFileDescriptorsNearLimit",
          "TeltonikaTLSCertificateExpiring", "TeltonikaCommandTimeoutsRising"]
RUNBOOK_PREFIX = "https://github.com/teltonika-ingest/teltonika-ingest/blob/main/OPERATIONS.md#"

problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
    return cond

def finish(note):
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(note)

def server_version():
    """The version the binary reports (IngestMetrics.version): the image tag the manifest must name."""
    text = open(os.path.join(ROOT, "Sources/Ingest/IngestMetrics.swift"), encoding="utf-8").read()
    m = re.search(r'static let version = "([^"]+)"', text)
    return m.group(1) if m else None

API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "PodDisruptionBudget": "policy/v1",
                "PodMonitor": "monitoring.coreos.com/v1"}

def k8s(path):
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d is not None]
    kinds = sorted(d.get("kind", "?") for d in docs)
    need(kinds == ["Deployment", "PodDisruptionBudget", "PodMonitor", "Service"],
         f"kinds are {kinds}, want Deployment, PodDisruptionBudget, PodMonitor, Service")
    for d in docs:
        need(d.get("apiVersion") == API_VERSIONS.get(d.get("kind")), f"{d.get('kind')}: apiVersion {d.get('apiVersion')}")
        need("namespace" not in d.get("metadata", {}), f"{d.get('kind')}: has a namespace")
    deps = [d for d in docs if d.get("kind") == "Deployment"]
    if not need(len(deps) == 1, "want exactly one Deployment"):
        return finish("")
    dep = deps[0]
    spec = dep["spec"]
    need(spec.get("replicas") == 2, "replicas != 2")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    need(spec.get("strategy", {}).get("type") == "RollingUpdate" and ru.get("maxUnavailable") == 0
         and ru.get("maxSurge") == 1, "strategy must be RollingUpdate maxUnavailable 0, maxSurge 1")
    tpl = spec["template"]
    pod_labels = tpl["metadata"].get("labels", {})
    sel = spec.get("selector", {}).get("matchLabels", {})
    need(sel and all(pod_labels.get(k) == v for k, v in sel.items()), "selector does not match the pod labels")
    ann = tpl["metadata"].get("annotations", {})
    need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9090"
         and ann.get("prometheus.io/path") == "/metrics", "prometheus.io scrape/port/path annotations")
    pod = tpl["spec"]
    psc = pod.get("securityContext", {})
    containers = pod.get("containers", [])
    if not need(len(containers) == 1, "want one container"):
        return finish("")
    c = containers[0]
    image, version = c.get("image", ""), server_version()
    digest = re.search(r"@sha256:[0-9a-f]{64}$", image)
    tag = image.rsplit("/", 1)[-1].split("@")[0].partition(":")[2]
    need(digest or tag == version, f"image {image!r}: pin it to the release ({version}, the server's version) or a digest, never :latest")
    need(c.get("imagePullPolicy") == "IfNotPresent", "imagePullPolicy must be IfNotPresent (a pinned image never changes)")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    need(sorted(ports.values()) == [5027, 9090], f"container ports {sorted(ports.values())}, want 5027 and 9090")
    need(all(p.get("protocol", "TCP") == "TCP" for p in c.get("ports", [])), "container ports must be TCP")
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env.get("REDIS_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
    need(ref.get("name") == "teltonika-redis" and ref.get("key") == "url", "REDIS_URL must come from Secret teltonika-redis key url")
    for name, want in (("LOG_FORMAT", "json"), ("METRICS_PORT", "9090")):
        need(env.get(name, {}).get("value") == want, f"env {name} != {want}")
    timeout_ms = env.get("SHUTDOWN_TIMEOUT_MS", {}).get("value")
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" and str(pre_stop[1]).isdigit() else None
    need(pause is not None and 5 <= pause <= 30,
         f"preStop must be [sleep, N] with N 5-30 s (the load balancer stops sending before the drain), is {pre_stop}")
    if need(timeout_ms is not None and str(timeout_ms).isdigit(), "env SHUTDOWN_TIMEOUT_MS missing or not a number"):
        grace = pod.get("terminationGracePeriodSeconds")
        need(isinstance(grace, int) and grace * 1000 > int(timeout_ms) + (pause or 0) * 1000,
             f"terminationGracePeriodSeconds {grace} s must exceed the preStop pause {pause} s + SHUTDOWN_TIMEOUT_MS {timeout_ms} ms")
    spread = {t.get("topologyKey"): t for t in pod.get("topologySpreadConstraints", [])}
    for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
        t = spread.get(key, {})
        tsel = t.get("labelSelector", {}).get("matchLabels", {})
        need(t.get("maxSkew") == 1 and tsel and all(pod_labels.get(k) == v for k, v in tsel.items()),
             f"topologySpreadConstraints: {key} with maxSkew 1 and the pods' labels")
    need(spread.get("kubernetes.io/hostname", {}).get("whenUnsatisfiable") == "DoNotSchedule",
         "two pods must never share a node: hostname spread DoNotSchedule")
    def port_of(p):
        return ports.get(p, p) if isinstance(p, str) else p
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        need(g.get("path") == path and port_of(g.get("port")) == 9090, f"{probe} must be httpGet {path} on 9090, is {g}")
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        need(all(k in res.get(part, {}) for k in ("cpu", "memory")), f"resources.{part} needs cpu and memory")
    csc = c.get("securityContext", {})
    def sc(key):
        return csc.get(key, psc.get(key))
    need(sc("runAsNonRoot") is True, "runAsNonRoot must be true")
    need(sc("runAsUser") == 10001, "runAsUser must be 10001 (the image's user)")
    need(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    need(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    need(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities.drop must be [ALL]")
    services = [d for d in docs if d.get("kind") == "Service"]
    by_type = {s["spec"].get("type", "ClusterIP"): s for s in services}
    lb = by_type.get("LoadBalancer")
    for s in services:
        ssel = s["spec"].get("selector", {})
        need(ssel and all(pod_labels.get(k) == v for k, v in ssel.items()), f"Service {s['metadata']['name']}: selector does not match the pods")
        for p in s["spec"].get("ports", []):
            need(port_of(p.get("targetPort", p.get("port"))) in (5027, 9090), f"Service {s['metadata']['name']}: targetPort {p.get('targetPort')} is no container port")
    if need(lb is not None, "no LoadBalancer Service for the devices"):
        lp = lb["spec"].get("ports", [])
        need([(p.get("port"), p.get("protocol", "TCP"), port_of(p.get("targetPort"))) for p in lp] == [(5027, "TCP", 5027)],
             f"device Service ports {lp}, want 5027/TCP -> 5027")
        need(lb["spec"].get("externalTrafficPolicy") == "Local", "device Service: externalTrafficPolicy must be Local")
        need(lb["spec"].get("sessionAffinity", "None") == "None", "device Service: sessionAffinity must be None")
    need(not [s for s in services if s is not lb], "metrics are scraped per pod (PodMonitor), not through a Service")
    if lb is not None:
        proxy_protocol(env, lb)
    def selects_pods(d):
        sel = d.get("spec", {}).get("selector", {}).get("matchLabels", {})
        return bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items())
    for d in docs:
        if d.get("kind") == "PodDisruptionBudget":
            spec = d.get("spec", {})
            need(selects_pods(d), "PodDisruptionBudget: selector does not match the pods")
            need(spec.get("maxUnavailable") == 1 or (isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] < spec_replicas(dep)),
                 f"PodDisruptionBudget must let one pod go at a time: {spec}")
        if d.get("kind") == "PodMonitor":
            need(selects_pods(d), "PodMonitor: selector does not match the pods")
            eps = d.get("spec", {}).get("podMetricsEndpoints", [])
            need([(e.get("port"), e.get("path")) for e in eps] == [("metrics", "/metrics")] and ports.get("metrics") == 9090,
                 f"PodMonitor must scrape the container port named metrics (9090) at /metrics: {eps}")
    finish(f"{len(docs)} documents; image {image}; grace {pod.get('terminationGracePeriodSeconds')} s > preStop {pause} s + "
           f"SHUTDOWN_TIMEOUT_MS {timeout_ms} ms")

PROXY_ANNOTATION = "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"
TARGET_GROUP_ATTRIBUTES = "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"

def proxy_protocol(env, lb):
    """The device Service's load balancer and the server agree on PROXY protocol v2: a balancer that sends the
    header to a server that does not read it breaks every login (the header reads as a bad IMEI), and a server
    that waits for a header no balancer sends refuses every device. With v2, PROXY_TRUSTED_CIDRS names networks,
    and the balancer's health check asks /readyz on the metrics port (when the manifest sets one)."""
    ann = lb.get("metadata", {}).get("annotations", {}) or {}
    sends = ann.get(PROXY_ANNOTATION) == "*" or "proxy_protocol_v2.enabled=true" in ann.get(TARGET_GROUP_ATTRIBUTES, "")
    mode = env.get("PROXY_PROTOCOL", {}).get("value", "off")
    need(mode in ("off", "v2", "optional"), f"env PROXY_PROTOCOL {mode!r}: off, v2 or optional")
    need(sends == (mode in ("v2", "optional")),
         f"device Service {'sends' if sends else 'does not send'} PROXY v2 headers ({PROXY_ANNOTATION}), but PROXY_PROTOCOL is {mode}")
    if mode in ("v2", "optional"):
        cidrs = [c.strip() for c in str(env.get("PROXY_TRUSTED_CIDRS", {}).get("value", "")).split(",") if c.strip()]
        cidr = re.compile(r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:]+)(/[0-9]{1,3})?$")
        need(cidrs and all(cidr.match(c) for c in cidrs), f"PROXY_TRUSTED_CIDRS must list the balancer's networks, is {cidrs}")
    if "service.beta.kubernetes.io/aws-load-balancer-healthcheck-port" in ann:
        need(ann.get("service.beta.kubernetes.io/aws-load-balancer-healthcheck-port") == "9090"
             and ann.get("service.beta.kubernetes.io/aws-load-balancer-healthcheck-path") == "/readyz"
             and ann.get("service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol", "").lower() == "http",
             "the balancer's health check must be HTTP /readyz on 9090")

def spec_replicas(dep):
    return dep.get("spec", {}).get("replicas", 1)

def seconds(v):
    m = re.fullmatch(r"\s*(\d+)\s*(s|sec|min|m)?\s*", v or "")
    if not m:
        return None
    return int(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)

def systemd_unit(path):
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    cp.optionxform = str
    cp.read(path, encoding="utf-8")
    for s in ("Unit", "Service", "Install"):
        need(cp.has_section(s), f"missing [{s}]")
    if problems:
        return finish("")
    svc = cp["Service"]
    need(svc.get("ExecStart", "").split()[:2] == ["/usr/local/bin/teltonika-ingest", "serve"], "ExecStart must run /usr/local/bin/teltonika-ingest serve")
    need(svc.get("Type") == "notify" and svc.get("NotifyAccess") == "main",
         "Type must be notify with NotifyAccess=main (the server sends READY=1, WATCHDOG=1, STOPPING=1)")
    watchdog = seconds(svc.get("WatchdogSec"))
    need(watchdog is not None and 10 <= watchdog <= 60, f"WatchdogSec {svc.get('WatchdogSec')} must be 10-60 s (pinged every half)")
    need(re.fullmatch(r"\d+[KMG]", svc.get("MemoryMax", "")) is not None, "MemoryMax must be set (e.g. 1G)")
    need("@system-service" in svc.get("SystemCallFilter", "").split(), "SystemCallFilter must allow @system-service (and no more than it needs)")
    need(svc.get("SystemCallErrorNumber") == "EPERM", "SystemCallErrorNumber=EPERM: a filtered call fails instead of killing the process")
    need(svc.get("Restart") == "on-failure", "Restart must be on-failure")
    need(svc.get("LimitNOFILE", "").isdigit() and int(svc["LimitNOFILE"]) >= 65536, "LimitNOFILE must be >= 65536")
    need(svc.get("KillSignal") == "SIGTERM", "KillSignal must be SIGTERM")
    stop = seconds(svc.get("TimeoutStopSec"))
    need(stop is not None and stop * 1000 > SHUTDOWN_TIMEOUT_MS_DEFAULT,
         f"TimeoutStopSec {svc.get('TimeoutStopSec')} must exceed SHUTDOWN_TIMEOUT_MS {SHUTDOWN_TIMEOUT_MS_DEFAULT} ms")
    need(svc.get("EnvironmentFile") == "-/etc/teltonika-ingest/env", "EnvironmentFile must be -/etc/teltonika-ingest/env")
    need(svc.get("DynamicUser") == "yes" or bool(svc.get("User")), "needs DynamicUser=yes or a User=")
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes")):
        need(svc.get(key) == want, f"{key} must be {want}")
    backtrace = svc.get("Environment", "")
    need("SWIFT_BACKTRACE=" in backtrace and "interactive=no" in backtrace
         and "swift-backtrace=/usr/local/libexec/swift-backtrace-static" in backtrace,
         "Environment=SWIFT_BACKTRACE=enable=yes,interactive=no,swift-backtrace=/usr/local/libexec/swift-backtrace-static "
         "(the static binary's backtracer, installed beside it)")
    need("network-online.target" in cp["Unit"].get("After", "") and "network-online.target" in cp["Unit"].get("Wants", ""),
         "After= and Wants= network-online.target")
    need(cp["Install"].get("WantedBy") == "multi-user.target", "WantedBy must be multi-user.target")
    finish(f"TimeoutStopSec {stop} s > {SHUTDOWN_TIMEOUT_MS_DEFAULT // 1000} s, LimitNOFILE {svc.get('LimitNOFILE')}, "
           f"WatchdogSec {watchdog} s, MemoryMax {svc.get('MemoryMax')}")

def dockerfile(path):
    """Base images fully qualified (registry/namespace/name:tag); pinned by digest when REQUIRE_DIGEST_PINS=1
    (scripts/pin-base-images.sh writes the pins where the registry is reachable)."""
    froms = [line.split()[1] for line in open(path, encoding="utf-8") if line.startswith("FROM ")]
    need(len(froms) == 2, f"want a build and a runtime stage, FROM lines: {froms}")
    unpinned = []
    for image in froms:
        need(re.fullmatch(r"[a-z0-9.-]+\.[a-z]+/[a-z0-9._-]+/[a-z0-9._-]+:[A-Za-z0-9._-]+(@sha256:[0-9a-f]{64})?", image) is not None,
             f"FROM {image}: fully qualify it as registry/namespace/name:tag")
        if "@sha256:" not in image:
            unpinned.append(image)
    if os.environ.get("REQUIRE_DIGEST_PINS") == "1":
        need(not unpinned, f"not pinned by digest (run scripts/pin-base-images.sh): {unpinned}")
    text = open(path, encoding="utf-8").read()
    need(re.search(r"HEALTHCHECK[^\n]*\\\n[^\n]*GET /healthz ", text) is not None, "HEALTHCHECK must ask /healthz (liveness), not /readyz")
    stop = re.search(r"docker run [^\n]*--stop-timeout (\d+)", text)
    need(stop is not None and int(stop.group(1)) * 1000 > SHUTDOWN_TIMEOUT_MS_DEFAULT,
         f"the docker run example needs --stop-timeout above SHUTDOWN_TIMEOUT_MS ({SHUTDOWN_TIMEOUT_MS_DEFAULT} ms)")
    finish(f"{len(froms)} base images fully qualified; " + (f"NOT pinned by digest: {', '.join(unpinned)}" if unpinned else "all pinned by digest"))

def github_anchors(markdown_path):
    anchors, seen = set(), {}
    in_code = False
    for line in open(markdown_path, encoding="utf-8"):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda g: g.group(1) or "", m.group(1)).strip().lower()
        slug = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors

def alerts(rules_path, tests_path, ops_path):
    doc = yaml.safe_load(open(rules_path, encoding="utf-8"))
    rules = [r for g in doc.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    names = [r["alert"] for r in rules]
    need(sorted(names) == sorted(ALERTS), f"alerts {sorted(names)} differ from the expected {sorted(ALERTS)}")
    need(len(set(names)) == len(names), "duplicate alert names")
    anchors = github_anchors(ops_path)
    for r in rules:
        a, lab, ann = r["alert"], r.get("labels", {}), r.get("annotations", {})
        need(lab.get("severity") in ("critical", "warning", "info"), f"{a}: severity {lab.get('severity')!r}")
        need(bool(ann.get("summary")) and bool(ann.get("description")), f"{a}: needs summary and description")
        url = ann.get("runbook_url", "")
        need(url == RUNBOOK_PREFIX + "alert-" + a.lower(), f"{a}: runbook_url {url!r}, want {RUNBOOK_PREFIX}alert-{a.lower()}")
        anchor = url.split("#", 1)[-1]
        need(anchor in anchors, f"{a}: no heading in {ops_path} has the anchor #{anchor} (want '### Alert: {a}')")
    tests = yaml.safe_load(open(tests_path, encoding="utf-8"))
    fires, quiet = set(), set()
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case.get("alertname"))
    for a in names:
        need(a in fires, f"{a}: no test where it fires")
        need(a in quiet, f"{a}: no test where it does not fire")
    finish(f"{len(names)} alerts, severities {sorted({r['labels']['severity'] for r in rules})}, all runbook anchors found")

def dashboard(path):
    d = json.load(open(path, encoding="utf-8"))
    need(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36, f"schemaVersion {d.get('schemaVersion')}")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds_vars = [n for n, v in variables.items() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    need(ds_vars == ["DS_PROMETHEUS"], f"want one Prometheus datasource variable DS_PROMETHEUS, have {ds_vars}")
    for name in ("job", "namespace", "instance"):
        need(name in variables and variables[name].get("type") == "query", f"no {name} variable")
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    panels = list(walk(d.get("panels", [])))
    ids = [p.get("id") for p in panels]
    need(len(ids) == len(set(ids)), "duplicate panel ids")
    n = 0
    for p in panels:
        if p.get("type") == "row":
            continue
        n += 1
        t = p.get("title", "?")
        targets = p.get("targets", [])
        need(targets and all(isinstance(x.get("expr"), str) and x["expr"].strip() for x in targets), f"panel {t!r}: needs targets with expr")
        need(p.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}", f"panel {t!r}: datasource must be ${{DS_PROMETHEUS}}")
        for x in targets:
            for selector in re.findall(r"\b(?:teltonika|process)_[a-z0-9_]+(\{[^}]*\})?", x.get("expr", "")):
                need(all(f'{v}=~"${v}"' in selector for v in ("job", "namespace", "instance")),
                     f"panel {t!r}: {x.get('expr')!r} does not filter every series by $job, $namespace and $instance")
        # One unit per panel, so never two units on one axis (an override may move a series, not change its unit).
        need(bool(p.get("fieldConfig", {}).get("defaults", {}).get("unit")), f"panel {t!r}: no unit")
        for o in p.get("fieldConfig", {}).get("overrides", []):
            need(all(prop.get("id") != "unit" for prop in o.get("properties", [])), f"panel {t!r}: an override changes the unit")
    # The top row answers the 3 a.m. questions; then ACK latency per instance and Redis' own state.
    first_row = []
    for p in d.get("panels", []):
        if p.get("type") == "row" and first_row:
            break
        first_row.append(p)
    top = " ".join(x.get("expr", "") for p in first_row for x in p.get("targets", []))
    for metric, question in (("teltonika_devices_online", "devices online"), ("teltonika_records_published_total", "records stored/s"),
                             ("teltonika_acks_total", "ACK ratio"), ("teltonika_ready", "ready instances"),
                             ("teltonika_ack_latency_seconds_bucket", "ACK latency per instance")):
        need(metric in top, f"the first row does not show {question} ({metric})")
    need(re.search(r"by \(instance, le\) \(rate\(teltonika_ack_latency_seconds_bucket", top) is not None, "ACK latency is not per instance")
    every = " ".join(x.get("expr", "") for p in panels for x in p.get("targets", []))
    for metric in ("teltonika_stream_length", "teltonika_stream_group_lag", "teltonika_redis_memory_used_bytes"):
        need(metric in every, f"no Redis panel shows {metric}")
    finish(f"{n} panels, every one with PromQL targets filtered by job, namespace and instance, one unit each")

def series(*paths):
    """Every metric the dashboard and the alert rules name (scripts/metric-names.py) must be one the server
    defines: a name in quotes in Sources/ (metrics are named once, in IngestMetrics.swift and
    ProcessMetrics.swift). MetricsTests checks the same names against a live scrape."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/metric-names.py"), *paths], capture_output=True, text=True)
    if not need(out.returncode == 0, f"metric-names.py: {out.stderr.strip()}"):
        return finish("")
    names = out.stdout.split()
    sources = ""
    for folder, _, files in os.walk(os.path.join(ROOT, "Sources")):
        for f in files:
            if f.endswith(".swift"):
                sources += open(os.path.join(folder, f), encoding="utf-8").read()
    defined = set(re.findall(r'"((?:teltonika|process)_[a-z0-9_]+)"', sources))
    for name in names:
        need(name in defined, f"{name} is used but the server defines no such metric")
    need(len(names) >= 15, f"only {len(names)} metric names found: {names}")
    finish(f"{len(names)} metrics used by {len(paths)} files, all defined by the server")

check, args = sys.argv[1], sys.argv[2:]
{"k8s": k8s, "systemd": systemd_unit, "alerts": alerts, "dashboard": dashboard, "dockerfile": dockerfile,
 "series": series}[check](*args)
