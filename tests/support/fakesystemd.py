"""Stand-ins for ``systemd-run`` and ``systemctl``: systemd is not PID 1 on this machine.

Only the lab has real systemd (tests/lab/test_lab_sandbox.py, test_lab_faults.py). These
stand-ins let the sandbox's systemd backend run here with real processes, and they keep the
one rule of systemd the host-shutdown bug came from (systemd.service(5), SuccessExitStatus=):
a main process killed by SIGHUP, SIGINT, SIGTERM or SIGPIPE is a clean exit, ``Result=success``,
for every service type but ``oneshot``, and a unit that ended with ``success`` is collected at
once, so ``systemctl show`` afterwards knows nothing of how it ended. ``systemd-run --wait``
exits 0 for ``success``, the main process's status for ``exit-code``, 1 otherwise.

``systemctl stop UNIT`` sends SIGTERM as a shutdown's stop job does; ``is-system-running``
prints what ``<state dir>/system`` holds (``running`` when absent; ``unreachable`` fails as
systemctl does once PID 1 has closed its socket).
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEMD_RUN = r'''#!/usr/bin/python3
import os, signal, subprocess, sys
state = os.environ.get("FAKE_SYSTEMD_DIR") or STATE
args = sys.argv[1:]
cut = args.index("--")
opts, argv = args[:cut], args[cut + 1:]
unit = next(a.split("=", 1)[1] for a in opts if a.startswith("--unit="))
kind = next((a.split("=", 1)[1] for a in opts if a.startswith("--service-type=")), "simple")
workdir = next((a.split("=", 1)[1] for a in opts if a.startswith("--working-directory=")), "/")
props = [a.split("=", 1)[1] for a in opts if a.startswith("--property=")]
env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
env.update(a.split("=", 1)[1].split("=", 1) for a in opts if a.startswith("--setenv="))
statedir = next((p.split("=", 1)[1] for p in props if p.startswith("StateDirectory=")), "")
if statedir and not os.path.lexists("/var/lib/" + statedir):
    os.symlink("private/" + statedir, "/var/lib/" + statedir)
with open(os.path.join(state, unit + ".argv"), "w") as fh:
    fh.write("\n".join(sys.argv))
child = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
with open(os.path.join(state, unit + ".pid"), "w") as fh:
    fh.write(str(child.pid))
rc = child.wait()
os.unlink(os.path.join(state, unit + ".pid"))
how, status = (1, rc) if rc >= 0 else (2, -rc)
if rc == 0 or (how == 2 and status in (1, 2, 13, 15) and kind != "oneshot"):
    result = "success"
elif how == 1:
    result = "exit-code"
else:
    result = "signal"
if result != "success":  # a failed unit stays until reset-failed; a successful one is collected
    with open(os.path.join(state, unit + ".show"), "w") as fh:
        fh.write(f"Result={result}\nExecMainCode={how}\nExecMainStatus={status}\n")
sys.exit(0 if result == "success" else status if result == "exit-code" else 1)
'''

SYSTEMCTL = r'''#!/usr/bin/python3
import os, signal, sys
state = os.environ.get("FAKE_SYSTEMD_DIR") or STATE
args = sys.argv[1:]
verb, unit = args[0], (args[-1] if len(args) > 1 else "")
def pid():
    try:
        return int(open(os.path.join(state, unit + ".pid")).read())
    except OSError:
        return 0
if verb == "is-system-running":
    try:
        system = open(os.path.join(state, "system")).read().strip()
    except OSError:
        system = "running"
    if system == "unreachable":  # PID 1 has closed its socket: late in a shutdown
        sys.exit("Failed to connect to bus: Connection refused")
    print(system)
elif verb in ("kill", "stop"):
    name = next((a.split("=", 1)[1] for a in args if a.startswith("--signal=")), "SIGTERM")
    if pid():
        os.killpg(pid(), getattr(signal, name))
elif verb == "reset-failed":
    try:
        os.unlink(os.path.join(state, unit + ".show"))
    except OSError:
        pass
elif verb == "show":
    try:
        shown = dict(line.split("=", 1) for line in open(os.path.join(state, unit + ".show")).read().split())
    except OSError:
        shown = {"Result": "success", "ExecMainCode": "0", "ExecMainStatus": "0"}
    ended = "failed" if shown["Result"] != "success" else "inactive"
    shown["ActiveState"] = "active" if pid() else ended
    wanted = [p.split("=", 1)[1] for p in args if p.startswith("--property=")]
    names = [n for w in wanted for n in w.split(",")]
    for name in names:
        value = shown.get(name, "")
        print(value if "--value" in args else f"{name}={value}")
'''


def install(bindir: Path, state: Path) -> dict[str, str]:
    """Write both stand-ins into ``bindir``; returns the environment that puts them first on PATH.

    They find ``state`` without ``FAKE_SYSTEMD_DIR`` too: the runner passes the sandbox PATH only.
    """
    bindir.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for name, text in (("systemd-run", SYSTEMD_RUN), ("systemctl", SYSTEMCTL)):
        path = bindir / name
        path.write_text(text.replace("or STATE", f"or {str(state)!r}"))  # found without the variable too
        path.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_SYSTEMD_DIR": str(state)}


def system_state(state: Path, value: str) -> None:
    """What ``systemctl is-system-running`` says from now on (``stopping``: the host is going down)."""
    (state / "system").write_text(value + "\n")
