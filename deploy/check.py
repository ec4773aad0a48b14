#!/usr/bin/python3
"""Consistency checks for Sluice's deployment files (run by deploy/check.sh).

Reads the rendered compose file and kustomize overlays that check.sh
produced, the Dockerfile, the NATS accounts, the HAProxy and Prometheus
configs, the alert rules and the Grafana dashboard, and checks that they
agree with each other and with what the binaries accept:

- every Deployment (and the NATS StatefulSet) has readiness and liveness
  probes on its admin port, CPU and memory requests and limits, a PDB, and
  every Deployment an HPA;
- images are sluice/<tier> for the tiers (the Dockerfile has that target,
  its entry point runs sluice-<tier>) or an allowed third-party image;
- every SLUICE_* variable set anywhere is one the tier's binary accepts
  (from `bin/sluice-<tier> --help` when built, else the documented list
  and the names in the C sources);
- ports agree: listen addresses vs containerPorts/expose, probes, Services,
  the Ingress, HAProxy and Prometheus targets;
- grace periods cover the drain of the gateway and of the worker;
- NATS users and passwords line up between the tiers and nats-server;
- every agent's model is served by the workers (SLUICE_WORKER_MODELS), and
  the agents files follow orchestrator/orch_agents.h;
- the build stage installs what the Makefile's pkg-config modules need, and
  the runtime stage the libraries the build (and the built binaries) link;
- alert rules and dashboard panels parse as PromQL and use metrics the
  tiers export.

Exits 1 with one line per problem, 0 when all is well. Python 3 + PyYAML
(Debian python3-yaml), with node for the PromQL grammar.
"""

import json
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIERS = ("gateway", "orchestrator", "worker")
# Defaults of the binaries (the brief's facts; --help overrides when built).
ADMIN_DEFAULT = {"gateway": 9090, "orchestrator": 9091, "worker": 9092}
LISTEN_DEFAULT = 8080
DRAIN_GRACE_MS_DEFAULT = 10000
# Every variable the design names (used when the binaries are not built).
KNOWN_VARS = {
    "SLUICE_NATS_URL", "SLUICE_NATS_USER", "SLUICE_NATS_PASSWORD",
    "SLUICE_JWT_SECRET", "SLUICE_JWT_PUBLIC_KEY", "SLUICE_RESUME_SECRET",
    "SLUICE_LISTEN", "SLUICE_ADMIN_LISTEN", "SLUICE_AGENTS_FILE",
    "SLUICE_MODEL_BACKEND", "SLUICE_MODEL_URL", "SLUICE_MODEL_API_KEY",
    "SLUICE_MODEL_TIMEOUT_MS", "SLUICE_ECHO_TOKEN_DELAY_MS",
    "SLUICE_WORKER_CONCURRENCY", "SLUICE_DRAIN_GRACE_MS", "SLUICE_TLS_CERT",
    "SLUICE_TLS_KEY", "SLUICE_WEB_ROOT", "SLUICE_DEV_MODE", "SLUICE_LOG_LEVEL",
    "SLUICE_STREAM_REPLICAS", "SLUICE_TENANT_QUEUE_MAX",
    "SLUICE_OUT_MAX_AGE_S", "SLUICE_OUT_HISTORY", "SLUICE_RESUME_WINDOW_S",
}
# The metrics the tiers are planned to export (final names come from the
# code: when the sources define metric names, those are used instead).
PLANNED_METRICS = {
    "sluice_gw_connections", "sluice_gw_connections_total",
    "sluice_gw_frames_in_total", "sluice_gw_frames_out_total",
    "sluice_gw_bytes_in_total", "sluice_gw_bytes_out_total",
    "sluice_gw_busy_total", "sluice_gw_slow_consumer_closes_total",
    "sluice_gw_resumes_total", "sluice_gw_gap_fills_total",
    "sluice_gw_delivery_latency_seconds", "sluice_gw_handshake_refusals_total",
    "sluice_orch_events_total", "sluice_orch_causal_waits_total",
    "sluice_orch_causal_gaps_total", "sluice_orch_jobs_dispatched_total",
    "sluice_orch_busy_total", "sluice_orch_fallbacks_total",
    "sluice_orch_processing_seconds",
    "sluice_wrk_jobs_total", "sluice_wrk_ttft_seconds", "sluice_wrk_job_seconds",
    "sluice_wrk_tokens_total", "sluice_wrk_inflight",
    "sluice_nats_connected", "sluice_ready",
}
THIRD_PARTY_IMAGES = ("nats:", "natsio/prometheus-nats-exporter:", "haproxy:",
                      "prom/prometheus:", "grafana/grafana:")
# Secrets the prod overlay expects to exist in the cluster (never rendered).
EXTERNAL_SECRETS = {"sluice-secrets", "sluice-nats-users", "sluice-tls"}
NATS_USERS = {"gateway", "orchestrator", "worker", "sluicectl", "sys"}

problems = []
notes = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


def note(msg):
    notes.append(msg)


def rel(path):
    return os.path.relpath(path, ROOT)


def port_of(addr):
    """Port of a "host:port" listen address, or None."""
    m = re.fullmatch(r"\[?[^\]]*\]?:(\d{1,5})", str(addr))
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------
# What the binaries accept.

def help_of(tier, bindir):
    """Variables and defaults that `bin/sluice-<tier> --help` lists, or None."""
    exe = os.path.join(bindir, f"sluice-{tier}")
    if not os.access(exe, os.X_OK):
        return None
    try:
        r = subprocess.run([exe, "--help"], env={"PATH": "/usr/bin:/bin"},
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        fail(rel(exe), f"--help failed: {e}")
        return {}
    out = r.stdout + r.stderr
    if r.returncode != 0:
        fail(rel(exe), f"--help exited {r.returncode}")
    names = {}
    # "  SLUICE_X   --flag\n      help (default: D)": the default is on the
    # variable's line or the next ones, before the next variable.
    cur = None
    for line in out.splitlines():
        m = re.match(r"\s*(SLUICE_[A-Z0-9_]+)\s+--[a-z0-9-]+\s*$", line)
        if m:
            cur = m.group(1)
            names.setdefault(cur, None)
        if cur:
            d = re.search(r"\(default: ([^)]*)\)", line)
            if d and names[cur] is None:
                names[cur] = d.group(1)
    if not names:
        fail(rel(exe), "--help lists no SLUICE_* variable")
    return names


class Accepts:
    def __init__(self, bindir):
        self.per_tier = {}
        for t in TIERS:
            h = help_of(t, bindir)
            if h is not None:
                self.per_tier[t] = h
        missing = [t for t in TIERS if t not in self.per_tier]
        self.known = KNOWN_VARS | source_vars()
        if missing:
            note("per-tier variable check SKIPPED for " + ", ".join(missing) +
                 f": {rel(bindir)}/sluice-<tier> not built (run `make` first);"
                 " names were only checked against the documented list and the"
                 " SLUICE_* names in the C sources")
        else:
            note("variables checked against `--help` of bin/sluice-{gateway,orchestrator,worker}")

    def check(self, where, tier, var):
        if tier in self.per_tier:
            if var not in self.per_tier[tier]:
                fail(where, f"{var} is not accepted by sluice-{tier} (not in its --help)")
        elif var not in self.known:
            fail(where, f"{var} is not a known Sluice variable")

    def admin_default(self, tier):
        d = self.per_tier.get(tier, {}).get("SLUICE_ADMIN_LISTEN")
        return port_of(d) if d else ADMIN_DEFAULT[tier]

    def listen_default(self):
        d = self.per_tier.get("gateway", {}).get("SLUICE_LISTEN")
        return port_of(d) if d else LISTEN_DEFAULT

    def int_default(self, tier, var, fallback):
        d = self.per_tier.get(tier, {}).get(var)
        try:
            return int(d) if d is not None else fallback
        except ValueError:
            return fallback


def source_vars():
    """SLUICE_* names quoted in the C sources (stream names excluded)."""
    names = set()
    for d in ("common", "gateway", "orchestrator", "worker"):
        for p in globs(os.path.join(ROOT, d), ".c"):
            names |= set(re.findall(r'"(SLUICE_[A-Z0-9_]+)"', open(p, errors="replace").read()))
    return names - {"SLUICE_IN", "SLUICE_WORK", "SLUICE_OUT"}


def tier_of_image(image):
    m = re.fullmatch(r"sluice/(gateway|orchestrator|worker)(:[A-Za-z0-9._-]+)?", image or "")
    return m.group(1) if m else None


def check_image(where, image, need_tag):
    if tier_of_image(image):
        tag = image.partition(":")[2]
        if need_tag and (not tag or tag == "latest"):
            fail(where, f"image {image} needs a release tag (set it in the overlay)")
        return
    if not image or not image.startswith(THIRD_PARTY_IMAGES):
        fail(where, f"unexpected image {image!r}")
    elif image.endswith(":latest"):
        fail(where, f"image {image} is not pinned")


# --------------------------------------------------------------------------
# Dockerfile.

def parse_dockerfile(path):
    """Stages: name -> {"from", "env", "expose", "entrypoint", "healthcheck", "user", "lines"}."""
    text = open(path).read()
    text = re.sub(r"\\\n", " ", text)
    args, stages, cur = {}, {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and cur is None:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
        elif word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base = re.sub(r"\$\{(\w+)\}", lambda mm: args.get(mm.group(1), ""), m.group(1))
            name = m.group(2) or f"stage{len(stages)}"
            parent = stages.get(base)
            cur = {"from": base, "env": dict(parent["env"]) if parent else {},
                   "expose": list(parent["expose"]) if parent else [],
                   "entrypoint": parent["entrypoint"] if parent else None,
                   "healthcheck": parent["healthcheck"] if parent else None,
                   "user": parent["user"] if parent else None,
                   "lines": [], "root": parent["root"] if parent else base}
            stages[name] = cur
        elif cur is not None:
            cur["lines"].append(line)
            if word == "ENV":
                for k, v in re.findall(r"(\w+)=(\S+)", rest):
                    cur["env"][k] = v
            elif word == "EXPOSE":
                cur["expose"] += [int(p.split("/")[0]) for p in rest.split()]
            elif word == "ENTRYPOINT":
                cur["entrypoint"] = rest
            elif word == "HEALTHCHECK":
                cur["healthcheck"] = rest
            elif word == "USER":
                cur["user"] = rest
    return stages, text


def runtime_packages(stage):
    pkgs = set()
    for line in stage["lines"]:
        if "apt-get install" in line:
            for w in line.split("install", 1)[1].split():
                if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", w):
                    pkgs.add(w)
    return pkgs


DPKG_DEPENDS = None


def dpkg_depends(pkg):
    """Direct dependencies of an installed package (alternatives included),
    or None when it is not installed here. One dpkg-query for all."""
    global DPKG_DEPENDS
    if DPKG_DEPENDS is None:
        DPKG_DEPENDS = {}
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Status}\t${Depends}, "
                                "${Pre-Depends}\n"], capture_output=True, text=True, timeout=30)
            out = r.stdout
        except OSError:
            out = ""
        for line in out.splitlines():
            name, status, deps = (line.split("\t") + ["", ""])[:3]
            if not status.endswith(" installed"):
                continue
            DPKG_DEPENDS[name] = [alt.strip().split()[0].split(":")[0]
                                  for d in deps.split(",") for alt in d.split("|") if alt.strip()]
    return DPKG_DEPENDS.get(pkg)


def dpkg_closure(pkgs):
    """pkgs and everything they depend on, as installed on this machine."""
    seen, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += dpkg_depends(p) or []
    return seen


def needed_packages(exes):
    """soname -> Debian packages providing it, for the DT_NEEDED libraries
    of the executables, or None when objdump or dpkg is missing."""
    sonames = set()
    for exe in exes:
        try:
            r = subprocess.run(["objdump", "-p", exe], capture_output=True, text=True, timeout=20)
        except OSError:
            return None
        if r.returncode != 0:
            return None
        sonames |= set(re.findall(r"NEEDED\s+(\S+)", r.stdout))
    owners = {so: set() for so in sonames}
    if sonames:
        try:
            q = subprocess.run(["dpkg", "-S"] + [f"*/{so}" for so in sorted(sonames)],
                               capture_output=True, text=True, timeout=30)
        except OSError:
            return None
        for line in q.stdout.splitlines():
            pkgs, _, path = line.partition(": ")
            so = os.path.basename(path.strip())
            if so in owners:
                owners[so] |= {p.strip().split(":")[0] for p in pkgs.split(",")}
    return owners


def check_dockerfile(acc, bindir):
    path = os.path.join(ROOT, "Dockerfile")
    where = "Dockerfile"
    stages, text = parse_dockerfile(path)
    for name, st in stages.items():
        if st["from"] in stages:
            continue
        if st["from"] != "debian:bookworm-slim":
            fail(where, f"stage {name} starts from {st['from']}, not debian:bookworm-slim")
    if "runtime" not in stages or "build" not in stages:
        fail(where, "needs stages `build` and `runtime`")
        return stages
    build_pkgs = runtime_packages(stages["build"])
    run_pkgs = runtime_packages(stages["runtime"])
    # Build packages: the -dev package of every pkg-config module the
    # Makefile asks for.
    mk = open(os.path.join(ROOT, "Makefile")).read()
    m = re.search(r"^PKGS\s*:?=\s*(.*)$", mk, re.M)
    for mod in (m.group(1).split() if m else []):
        r = subprocess.run(["pkg-config", "--variable=pcfiledir", mod], capture_output=True,
                           text=True)
        pc = os.path.join(r.stdout.strip(), f"{mod}.pc")
        q = subprocess.run(["dpkg", "-S", pc], capture_output=True, text=True)
        owners = {x.strip().split(":")[0] for x in q.stdout.partition(": ")[0].split(",") if x}
        if r.returncode != 0 or not owners:
            note(f"Dockerfile: pkg-config module {mod} not found here; its build package "
                 "was not checked")
        elif not owners & build_pkgs:
            fail(where, f"build stage lacks {'/'.join(sorted(owners))} (pkg-config {mod}, "
                        "used by the Makefile)")
    if "protoc-c" in mk and "protobuf-c-compiler" not in build_pkgs:
        fail(where, "build stage lacks protobuf-c-compiler (protoc-c, used by the Makefile)")
    # Runtime libraries: each -dev package of the build has its shared
    # library package in the runtime stage.
    for dev in sorted(p for p in build_pkgs if p.endswith("-dev")):
        deps = dpkg_depends(dev)
        if deps is None:
            note(f"Dockerfile: {dev} not installed here; its runtime package was not checked")
            continue
        libs = [d for d in deps if d.startswith("lib") and not d.endswith("-dev")]
        if libs and not set(libs) & run_pkgs:
            fail(where, f"runtime stage lacks the library of {dev} (one of {', '.join(libs)})")
    exes = [os.path.join(bindir, f"sluice-{t}") for t in TIERS]
    exes = [e for e in exes if os.access(e, os.X_OK)]
    needed = needed_packages(exes) if exes else None
    if needed is not None:
        closure = dpkg_closure(run_pkgs | {"libc6"})
        for soname, owners in sorted(needed.items()):
            if re.match(r"lib(asan|ubsan|tsan|lsan)\.", soname):
                continue  # a sanitizer build: the image builds the release variant
            if owners and not owners & closure:
                fail(where, f"the binaries need {soname} ({'/'.join(sorted(owners))}), "
                            "which the runtime stage does not install")
    gw_src = " ".join(open(p, errors="replace").read()
                      for p in sorted(globs(os.path.join(ROOT, "gateway"), ".c")))
    for opt, pkg in (("LWS_SERVER_OPTION_LIBUV", "libwebsockets-evlib-uv"),
                     ("LWS_SERVER_OPTION_LIBEV", "libwebsockets-evlib-ev"),
                     ("LWS_SERVER_OPTION_GLIB", "libwebsockets-evlib-glib")):
        if opt in gw_src and pkg not in run_pkgs:
            fail(where, f"the gateway uses {opt}: the runtime stage needs {pkg} (a plugin, "
                        "loaded at run time)")
    if not stages["runtime"]["user"] or stages["runtime"]["user"].split(":")[0] in ("root", "0"):
        fail(where, "runtime stage must switch to a non-root USER")
    for t in TIERS:
        st = stages.get(t)
        if st is None:
            fail(where, f"no target `{t}` (docker build --target {t})")
            continue
        if st["root"] != "debian:bookworm-slim" or st["from"] != "runtime":
            fail(where, f"target {t} must build FROM runtime")
        if not st["entrypoint"] or f"/sluice-{t}\"" not in st["entrypoint"]:
            fail(where, f"target {t}: ENTRYPOINT does not run sluice-{t}")
        if not st["healthcheck"] or "/healthz" not in st["healthcheck"]:
            fail(where, f"target {t}: no HEALTHCHECK on /healthz")
        for var in st["env"]:
            if var.startswith("SLUICE_"):
                acc.check(f"{where} target {t}", t, var)
        admin = port_of(st["env"].get("SLUICE_ADMIN_LISTEN", "")) or acc.admin_default(t)
        if admin not in st["expose"]:
            fail(where, f"target {t}: admin port {admin} not EXPOSEd")
        if t == "gateway":
            ws = port_of(st["env"].get("SLUICE_LISTEN", "")) or acc.listen_default()
            if ws not in st["expose"]:
                fail(where, f"target gateway: WebSocket port {ws} not EXPOSEd")
            root = st["env"].get("SLUICE_WEB_ROOT")
            if root and f" {root}/" not in text:
                fail(where, f"SLUICE_WEB_ROOT={root} but nothing is copied there")
    return stages


def globs(d, ext):
    if not os.path.isdir(d):
        return []
    return [os.path.join(d, f) for f in os.listdir(d) if f.endswith(ext)]


# --------------------------------------------------------------------------
# NATS accounts.

def nats_accounts():
    text = open(os.path.join(ROOT, "deploy/nats/accounts.conf")).read()
    users = dict(re.findall(r"\{user:\s*(\w+),\s*password:\s*\$(\w+)", text))
    if set(users) != NATS_USERS:
        fail("deploy/nats/accounts.conf", f"users are {sorted(users)}, want {sorted(NATS_USERS)}")
    return users, text


# --------------------------------------------------------------------------
# Kubernetes.

def env_map(container):
    """name -> value (str) or ("secret", name, key, optional) / ("other",)."""
    out = {}
    for e in container.get("env") or []:
        if "value" in e:
            out[e["name"]] = str(e["value"])
        elif "valueFrom" in e and "secretKeyRef" in e["valueFrom"]:
            r = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = ("secret", r["name"], r["key"], bool(r.get("optional")))
        else:
            out[e["name"]] = ("other",)
    return out


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


def selector_matches(selector, labels):
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for ex in selector.get("matchExpressions") or []:
        if ex["operator"] == "In" and labels.get(ex["key"]) not in ex["values"]:
            return False
    return True


def prestop_sleep(container):
    cmd = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
    if cmd and cmd[0] == "sleep" and len(cmd) == 2:
        return int(cmd[1])
    return 0


def check_k8s(overlay, path, acc, nats_users, nats_conf_text):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    where0 = f"k8s/{overlay}"
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    pdbs = by_kind.get("PodDisruptionBudget", [])
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    cms = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    ns = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if len(ns) != 1 or None in ns:
        fail(where0, f"objects are not all in one namespace: {sorted(map(str, ns))}")
    if not by_kind.get("NetworkPolicy"):
        fail(where0, "no NetworkPolicy")
    if not by_kind.get("Ingress"):
        fail(where0, "no Ingress")
    for t in TIERS:
        if not any(w["metadata"]["name"] == f"sluice-{t}" for w in by_kind.get("Deployment", [])):
            fail(where0, f"no Deployment sluice-{t}")
    sts = {s["metadata"]["name"]: s for s in by_kind.get("StatefulSet", [])}
    nats_replicas = sts["nats"]["spec"].get("replicas", 1) if "nats" in sts else 0
    if nats_replicas != 3:
        fail(where0, f"NATS StatefulSet has {nats_replicas} replicas, want 3")
    pod_labels = {}
    worker_models, agent_models = [], []

    def ref_secret(where, name, key, optional):
        if name in secrets:
            data = {**(secrets[name].get("data") or {}), **(secrets[name].get("stringData") or {})}
            if key not in data and not optional:
                fail(where, f"Secret {name} has no key {key}")
        elif overlay == "prod" and name in EXTERNAL_SECRETS:
            pass
        else:
            fail(where, f"references Secret {name}, which the overlay does not render")

    for w in workloads:
        kind, name = w["kind"], w["metadata"]["name"]
        where = f"{where0} {kind}/{name}"
        spec = w["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels") or {}
        pod_labels[name] = labels
        if not selector_matches(spec["selector"], labels):
            fail(where, "selector does not match the pod labels")
        if not any(selector_matches(p["spec"]["selector"], labels) for p in pdbs):
            fail(where, "no PodDisruptionBudget selects its pods")
        if kind == "Deployment":
            hpa = [h for h in hpas if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
                   and h["spec"]["scaleTargetRef"]["name"] == name]
            if not hpa:
                fail(where, "no HorizontalPodAutoscaler")
            else:
                h = hpa[0]["spec"]
                if h.get("minReplicas", 1) > h["maxReplicas"]:
                    fail(where, "HPA minReplicas > maxReplicas")
            if "replicas" in spec:
                fail(where, "sets spec.replicas although an HPA owns the count")
        sc = pod.get("securityContext") or {}
        if not sc.get("runAsNonRoot"):
            fail(where, "pod securityContext lacks runAsNonRoot: true")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for vol in pod.get("volumes") or []:
            if "configMap" in vol and vol["configMap"]["name"] not in cms:
                fail(where, f"volume {vol['name']}: ConfigMap {vol['configMap']['name']} not rendered")
            if "secret" in vol:
                ref_secret(where, vol["secret"]["secretName"], None, True)
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        fail(cw, f"no {part}.{r}")
            image = c.get("image", "")
            check_image(cw, image, need_tag=True)
            tier = tier_of_image(image)
            needs_probes = kind == "Deployment" or c["name"] == name
            if needs_probes:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        fail(cw, f"no {probe}")
            env = env_map(c)
            for var, val in env.items():
                if isinstance(val, tuple) and val[0] == "secret":
                    ref_secret(cw, val[1], val[2], val[3])
            sec = c.get("securityContext") or {}
            if tier and (sec.get("allowPrivilegeEscalation") is not False
                         or not sec.get("readOnlyRootFilesystem")):
                fail(cw, "container securityContext must forbid privilege escalation "
                         "and use a read-only root filesystem")
            if name == "nats" and c["name"] == "nats":
                wanted = {v for u, v in nats_users.items()}
                have = {k for k in env if k.startswith("NATS_PW_")}
                if wanted - have:
                    fail(cw, f"missing {sorted(wanted - have)} (used by accounts.conf)")
                if "POD_NAME" not in env and "$POD_NAME" in nats_conf_text:
                    fail(cw, "nats-cluster.conf uses $POD_NAME but the container lacks it")
            if not tier:
                continue
            if not c["name"] == tier:
                fail(cw, f"runs image {image}: name the container {tier}")
            if name != f"sluice-{tier}":
                fail(cw, f"image {image} in a workload not named sluice-{tier}")
            if c.get("command") or c.get("args"):
                fail(cw, "overrides the image entry point; configure through SLUICE_* instead")
            for var in env:
                if var.startswith("SLUICE_"):
                    acc.check(cw, tier, var)
            ports = {p["containerPort"] for p in c.get("ports") or []}
            admin = port_of(env.get("SLUICE_ADMIN_LISTEN", "")) if isinstance(
                env.get("SLUICE_ADMIN_LISTEN"), str) else None
            admin = admin or acc.admin_default(tier)
            if admin not in ports:
                fail(cw, f"admin port {admin} is not a containerPort")
            if tier == "gateway":
                ws = port_of(env.get("SLUICE_LISTEN", "")) or acc.listen_default()
                if ws not in ports:
                    fail(cw, f"WebSocket port {ws} is not a containerPort")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                                ("startupProbe", "/healthz")):
                p = c.get(probe)
                if not p:
                    continue
                hg = p.get("httpGet")
                if not hg:
                    fail(cw, f"{probe} is not an httpGet on the admin port")
                    continue
                if resolve_port(c, hg.get("port")) != admin:
                    fail(cw, f"{probe} port {hg.get('port')} is not the admin port {admin}")
                if hg.get("path") != path:
                    fail(cw, f"{probe} path {hg.get('path')}, want {path}")
            ann = spec["template"]["metadata"].get("annotations") or {}
            if ann.get("prometheus.io/port") not in (None, str(admin)):
                fail(cw, f"prometheus.io/port {ann['prometheus.io/port']} is not the admin port")
            user = env.get("SLUICE_NATS_USER")
            if user != tier:
                fail(cw, f"SLUICE_NATS_USER is {user!r}, want the tier's own NATS user {tier!r}")
            pw = env.get("SLUICE_NATS_PASSWORD")
            if not (isinstance(pw, tuple) and pw[0] == "secret"
                    and re.fullmatch(r"sluice-nats-users(-[a-z0-9]{10})?", pw[1]) and pw[2] == tier):
                fail(cw, f"SLUICE_NATS_PASSWORD must come from Secret sluice-nats-users key {tier}")
            url = env.get("SLUICE_NATS_URL", "")
            m = re.match(r"nats://([a-z0-9-]+):(\d+)$", url if isinstance(url, str) else "")
            if not m or m.group(1) not in services:
                fail(cw, f"SLUICE_NATS_URL {url!r} does not name a rendered Service")
            reps = env.get("SLUICE_STREAM_REPLICAS", "1")
            if isinstance(reps, str) and reps.isdigit():
                if int(reps) > nats_replicas:
                    fail(cw, f"SLUICE_STREAM_REPLICAS={reps} > {nats_replicas} NATS nodes")
                if overlay == "prod" and int(reps) != 3:
                    fail(cw, f"prod wants SLUICE_STREAM_REPLICAS=3, has {reps}")
            stop = prestop_sleep(c)
            if tier == "gateway":
                drain = env.get("SLUICE_DRAIN_GRACE_MS")
                drain = int(drain) if isinstance(drain, str) and drain.isdigit() else \
                    acc.int_default("gateway", "SLUICE_DRAIN_GRACE_MS", DRAIN_GRACE_MS_DEFAULT)
                need = stop + -(-drain // 1000) + 2
                if grace < need:
                    fail(cw, f"terminationGracePeriodSeconds {grace} < preStop {stop} s + "
                             f"drain {drain} ms + 2 s")
                if stop < 1:
                    fail(cw, "gateway needs a preStop sleep so that it leaves the endpoints "
                             "before it drains")
            if tier == "worker":
                dl = env.get("SLUICE_DRAIN_GRACE_MS")
                dl = int(dl) if isinstance(dl, str) and dl.isdigit() else \
                    acc.int_default("worker", "SLUICE_DRAIN_GRACE_MS", DRAIN_GRACE_MS_DEFAULT)
                need = stop + -(-dl // 1000) + 2
                if grace < need:
                    fail(cw, f"terminationGracePeriodSeconds {grace} < preStop {stop} s + "
                             f"drain {dl} ms + 2 s")
                worker_models.append(models_of(env.get("SLUICE_WORKER_MODELS"), acc))
            af = env.get("SLUICE_AGENTS_FILE")
            if tier == "orchestrator" and af is None:
                agent_models.append(({"default"}, f"{cw} (built-in agents)"))
            if isinstance(af, str):
                ok = False
                for vm in c.get("volumeMounts") or []:
                    vol = next((v for v in pod.get("volumes") or [] if v["name"] == vm["name"]), {})
                    cmn = (vol.get("configMap") or {}).get("name")
                    if cmn in cms and af.startswith(vm["mountPath"].rstrip("/") + "/"):
                        key = af[len(vm["mountPath"].rstrip("/")) + 1:]
                        if key in (cms[cmn].get("data") or {}):
                            ok = True
                            agent_models.append((check_agents(f"{cw} {af}",
                                                              cms[cmn]["data"][key]), cw))
                if not ok:
                    fail(cw, f"SLUICE_AGENTS_FILE={af} is not a key of a mounted ConfigMap")
    check_models(where0, agent_models, worker_models)
    for s in services.values():
        sel = s["spec"].get("selector")
        if not sel:
            continue
        targets = [w for w in workloads if all(pod_labels[w["metadata"]["name"]].get(k) == v
                                               for k, v in sel.items())]
        if not targets:
            fail(f"{where0} Service/{s['metadata']['name']}", "selects no workload")
            continue
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for w in targets:
                c0 = w["spec"]["template"]["spec"]["containers"]
                if not any(resolve_port(c, tp) for c in c0):
                    fail(f"{where0} Service/{s['metadata']['name']}",
                         f"targetPort {tp} is no port of {w['metadata']['name']}")
    for ing in by_kind.get("Ingress", []):
        iw = f"{where0} Ingress/{ing['metadata']['name']}"
        ann = ing["metadata"].get("annotations") or {}
        for a in ("proxy-read-timeout", "proxy-send-timeout"):
            v = ann.get(f"nginx.ingress.kubernetes.io/{a}")
            if v is None or int(v) < 60:
                fail(iw, f"{a} must be set and >= 60 s (WebSockets idle between heartbeats)")
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                b = p["backend"]["service"]
                svc = services.get(b["name"])
                if not svc:
                    fail(iw, f"backend Service {b['name']} not rendered")
                    continue
                want = b["port"].get("name") or b["port"].get("number")
                if not any(sp.get("name") == want or sp["port"] == want
                           for sp in svc["spec"]["ports"]):
                    fail(iw, f"Service {b['name']} has no port {want}")
        if overlay == "prod" and not ing["spec"].get("tls"):
            fail(iw, "prod Ingress without TLS")
    for h in hpas:
        ref = h["spec"]["scaleTargetRef"]
        if not any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"]
                   for w in workloads):
            fail(f"{where0} HPA/{h['metadata']['name']}", f"targets missing {ref['kind']}/{ref['name']}")
    if overlay == "prod":
        if secrets:
            fail(where0, f"prod renders Secrets {sorted(secrets)}: keep secret values out of git")
        note("k8s/prod expects Secrets created out of band: " + ", ".join(sorted(EXTERNAL_SECRETS)))


# --------------------------------------------------------------------------
# docker-compose.

def check_compose(path, acc, stages):
    cfg = yaml.safe_load(open(path))
    where0 = "docker-compose.yml"
    svcs = cfg.get("services") or {}
    worker_models, agent_models = [], []
    nats_env = (svcs.get("nats") or {}).get("environment") or {}
    for name in ("nats", "proxy") + TIERS:
        if name not in svcs:
            fail(where0, f"no service {name}")
    nats = svcs.get("nats") or {}
    cmd = " ".join(nats.get("command") or [])
    if "nats-single.conf" not in cmd:
        fail(f"{where0} nats", "must run deploy/nats/nats-single.conf")
    if not any(str(v.get("target") if isinstance(v, dict) else v).endswith("/data")
               or (isinstance(v, str) and ":/data" in v) for v in nats.get("volumes") or []):
        fail(f"{where0} nats", "JetStream store /data is not on a volume")
    for name, s in svcs.items():
        where = f"{where0} {name}"
        image = s.get("image", "")
        check_image(where, image, need_tag=False)
        tier = tier_of_image(image)
        if not tier:
            continue
        if name != tier:
            fail(where, f"service running {image} should be named {tier}")
        target = (s.get("build") or {}).get("target")
        if target != tier:
            fail(where, f"build.target is {target!r}, want {tier!r}")
        if tier not in stages:
            fail(where, f"Dockerfile has no target {tier}")
        if s.get("ports"):
            fail(where, "a scaled tier must not publish host ports (--scale would clash)")
        if s.get("container_name"):
            fail(where, "container_name prevents --scale")
        if "deploy" not in s or "replicas" not in s["deploy"]:
            fail(where, "no deploy.replicas")
        env = {**(stages.get(tier, {}).get("env") or {}), **(s.get("environment") or {})}
        for var in s.get("environment") or {}:
            if var.startswith("SLUICE_"):
                acc.check(where, tier, var)
        expose = {int(str(p).split("/")[0]) for p in s.get("expose") or []}
        admin = port_of(env.get("SLUICE_ADMIN_LISTEN") or "") or acc.admin_default(tier)
        if admin not in expose:
            fail(where, f"admin port {admin} not in expose")
        if env.get("SLUICE_NATS_USER") != tier:
            fail(where, f"SLUICE_NATS_USER should be {tier}")
        if env.get("SLUICE_NATS_PASSWORD") != nats_env.get(f"NATS_PW_{tier.upper()}"):
            fail(where, f"SLUICE_NATS_PASSWORD differs from nats' NATS_PW_{tier.upper()}")
        if env.get("SLUICE_NATS_URL") != "nats://nats:4222":
            fail(where, "SLUICE_NATS_URL should be nats://nats:4222")
        grace = parse_duration(s.get("stop_grace_period", "10s"))
        if tier == "gateway":
            ws = port_of(env.get("SLUICE_LISTEN") or "") or acc.listen_default()
            if ws not in expose:
                fail(where, f"WebSocket port {ws} not in expose")
            drain = int(env.get("SLUICE_DRAIN_GRACE_MS") or DRAIN_GRACE_MS_DEFAULT)
            if grace < drain / 1000 + 2:
                fail(where, f"stop_grace_period {grace}s does not cover the drain {drain} ms + 2 s")
            check_haproxy(ws, admin)
        if tier == "worker":
            dl = int(env.get("SLUICE_DRAIN_GRACE_MS") or
                     acc.int_default("worker", "SLUICE_DRAIN_GRACE_MS", DRAIN_GRACE_MS_DEFAULT))
            if grace < dl / 1000 + 2:
                fail(where, f"stop_grace_period {grace}s does not cover the drain {dl} ms + 2 s")
            worker_models.append(models_of(env.get("SLUICE_WORKER_MODELS"), acc))
        af = env.get("SLUICE_AGENTS_FILE")
        if tier == "orchestrator" and not af:
            agent_models.append(({"default"}, f"{where} (built-in agents)"))
        if af:
            src = None
            for v in s.get("volumes") or []:
                if isinstance(v, dict) and v.get("target") == af:
                    src = v.get("source")
                elif isinstance(v, str) and v.split(":")[1:2] == [af]:
                    src = v.split(":")[0]
            if src is None:
                fail(where, f"SLUICE_AGENTS_FILE={af} is not mounted")
            elif not os.path.isfile(src):
                fail(where, f"SLUICE_AGENTS_FILE is mounted from {src}, which does not exist")
            else:
                agent_models.append((check_agents(f"{where} {rel(src)}", open(src).read()), where))
        check_prometheus_target(tier, admin)
    check_models(where0, agent_models, worker_models)


AGENT_KEYS = {"name", "model", "backend_model", "system_prompt", "system", "match",
              "fallback", "max_concurrent", "description"}
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_agents(where, text):
    """Checks an agents document as orchestrator/orch_agents.h describes
    it; returns the set of models its agents use."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        fail(where, f"not JSON: {e}")
        return set()
    agents = doc.get("agents") if isinstance(doc, dict) else doc
    if not isinstance(agents, list) or not agents:
        fail(where, "no agents (want {\"agents\": [...]})")
        return set()
    names, models = set(), set()
    for i, a in enumerate(agents):
        w = f"{where} agent #{i}"
        if not isinstance(a, dict):
            fail(w, "not an object")
            continue
        for k in set(a) - AGENT_KEYS:
            fail(w, f"unknown key {k!r} (the orchestrator refuses it)")
        for k in ("name", "model"):
            if not isinstance(a.get(k), str) or not ID_RE.fullmatch(a[k]):
                fail(w, f"{k} must match [A-Za-z0-9_-]{{1,64}}")
        if a.get("name") in names:
            fail(w, f"duplicate name {a.get('name')!r}")
        names.add(a.get("name"))
        models.add(a.get("model"))
        m = a.get("match")
        if not (m in ("all", "mention") or isinstance(m, dict) and isinstance(m.get("regex"), str)):
            fail(w, 'match must be "all", "mention" or {"regex": "..."}')
        if "max_concurrent" in a and (not isinstance(a["max_concurrent"], int)
                                      or a["max_concurrent"] < 0):
            fail(w, "max_concurrent must be an integer >= 0")
    return models


def models_of(value, acc):
    if not isinstance(value, str):
        value = acc.per_tier.get("worker", {}).get("SLUICE_WORKER_MODELS") or "default"
    return {m.strip() for m in value.split(",") if m.strip()}


def check_models(where, agent_models, worker_models):
    """Every model an agent uses needs workers, or its jobs only ever end
    with the fallback."""
    served = set().union(*worker_models) if worker_models else set()
    for models, w in agent_models:
        for m in sorted(models - served):
            fail(w, f"agents use model {m!r}, which no worker serves "
                    f"(SLUICE_WORKER_MODELS: {', '.join(sorted(served)) or 'none'})")


def parse_duration(v):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(v))
    if not m:
        return 0
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)


def check_haproxy(ws, admin):
    path = os.path.join(ROOT, "deploy/compose/haproxy.cfg")
    text = open(path).read()
    m = re.search(r"^\s*server-template\s+\S+\s+\S+\s+gateway:(\d+)", text, re.M)
    if not m or int(m.group(1)) != ws:
        fail(rel(path), f"server-template must point at gateway:{ws}")
    m = re.search(r"^\s*default-server\b.*\bport\s+(\d+)", text, re.M)
    if not m or int(m.group(1)) != admin:
        fail(rel(path), f"health checks must use the gateway admin port {admin}")
    if "timeout tunnel" not in text:
        fail(rel(path), "no `timeout tunnel` for WebSockets")


def check_prometheus_target(tier, admin):
    path = os.path.join(ROOT, "deploy/prometheus/prometheus.yml")
    cfg = yaml.safe_load(open(path))
    for job in cfg.get("scrape_configs") or []:
        if job["job_name"] == f"sluice-{tier}":
            ports = {d.get("port") for d in job.get("dns_sd_configs") or []}
            if ports != {admin}:
                fail(rel(path), f"job sluice-{tier} scrapes port(s) {sorted(ports)}, want {admin}")
            return
    fail(rel(path), f"no scrape job sluice-{tier}")


# --------------------------------------------------------------------------
# Alerts and dashboard.

METRIC_RE = re.compile(r"\b(sluice_[a-z0-9_]+)")


def base_metric(name):
    return re.sub(r"_(bucket|sum|count)$", "", name)


def source_metrics():
    names = set()
    for d in ("common", "gateway", "orchestrator", "worker"):
        for p in globs(os.path.join(ROOT, d), ".c"):
            for m in re.findall(r'"(sluice_[a-z0-9_]+)', open(p, errors="replace").read()):
                names.add(m)
    return names


def check_promql(exprs):
    """Syntax of every expression, by deploy/promql/check.cjs (the PromQL
    grammar of Prometheus's UI, installed by deploy/tools.sh)."""
    mods = os.path.join(ROOT, "var/deploy-tools/promql/node_modules")
    if not os.path.isdir(mods):
        fail("promql", f"{rel(mods)} missing (run `make deploy-tools`)")
        return
    try:
        r = subprocess.run(["node", os.path.join(ROOT, "deploy/promql/check.cjs")],
                           input=json.dumps(exprs), capture_output=True, text=True,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_PATH": mods},
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        fail("promql", f"cannot run node: {e}")
        return
    for line in r.stdout.splitlines():
        if line.strip().startswith("FAIL:"):
            problems.append(line.strip()[len("FAIL:"):].strip())
        elif line.strip():
            note(line.strip())
    if r.returncode != 0 and "FAIL:" not in r.stdout:
        fail("promql", f"check.cjs exited {r.returncode}: {r.stderr.strip()[:300]}")


def check_metrics():
    used = {}
    exprs = []
    apath = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
    alerts = yaml.safe_load(open(apath))
    seen = set()
    for g in alerts.get("groups") or []:
        for r in g.get("rules") or []:
            w = f"{rel(apath)} {r.get('alert') or r.get('record')}"
            if "alert" in r:
                if r["alert"] in seen:
                    fail(w, "duplicate alert name")
                seen.add(r["alert"])
                if (r.get("labels") or {}).get("severity") not in ("page", "ticket", "info"):
                    fail(w, "labels.severity must be page, ticket or info")
                ann = r.get("annotations") or {}
                if not ann.get("summary") or not ann.get("description"):
                    fail(w, "needs annotations.summary and annotations.description")
            expr = r.get("expr", "")
            exprs.append([w, expr])
            for m in METRIC_RE.findall(expr):
                used.setdefault(base_metric(m), set()).add(w)
    if not seen:
        fail(rel(apath), "no alerts")
    dpath = os.path.join(ROOT, "deploy/grafana/sluice.json")
    try:
        dash = json.load(open(dpath))
    except ValueError as e:
        fail(rel(dpath), f"not JSON: {e}")
        return
    ids = set()

    def walk(panels):
        for p in panels:
            if p.get("id") in ids:
                fail(rel(dpath), f"duplicate panel id {p.get('id')}")
            ids.add(p.get("id"))
            for t in p.get("targets") or []:
                if t.get("expr"):
                    exprs.append([f"{rel(dpath)} panel {p.get('title')!r}", t["expr"]])
                for m in METRIC_RE.findall(t.get("expr", "")):
                    used.setdefault(base_metric(m), set()).add(f"{rel(dpath)} panel {p.get('title')!r}")
            walk(p.get("panels") or [])
    walk(dash.get("panels") or [])
    if not dash.get("uid") or not dash.get("title"):
        fail(rel(dpath), "needs a uid and a title")
    check_promql(exprs)
    src = source_metrics()
    if src:
        known, how = src, "the tiers' sources"
        note("metric names checked against the names in the C sources")
    else:
        known, how = PLANNED_METRICS, "the planned metric list"
        note("metric names checked against the planned list (no metric names in the sources yet)")
    for m, where in sorted(used.items()):
        if m not in known:
            fail(sorted(where)[0], f"uses {m}, which is not in {how}")


# --------------------------------------------------------------------------

def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--compose", required=True, help="rendered docker-compose config")
    ap.add_argument("--k8s", nargs=2, action="append", metavar=("OVERLAY", "FILE"), default=[])
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin"))
    a = ap.parse_args()
    acc = Accepts(a.bin)
    stages = check_dockerfile(acc, a.bin)
    users, conf = nats_accounts()
    conf += open(os.path.join(ROOT, "deploy/nats/nats-cluster.conf")).read()
    check_compose(a.compose, acc, stages)
    for overlay, path in a.k8s:
        check_k8s(overlay, path, acc, users, conf)
    check_metrics()
    # The file baked into the image (Dockerfile) is checked here; the
    # mounted ones above.
    m = re.search(r"^COPY\s+(\S+)\s+/etc/sluice/agents.json", open(os.path.join(ROOT, "Dockerfile")).read(), re.M)
    if m:
        check_agents(f"Dockerfile {m.group(1)}", open(os.path.join(ROOT, m.group(1))).read())
    for n in notes:
        print(f"  note: {n}")
    for p in problems:
        print(f"  FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
