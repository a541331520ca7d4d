"""The components' processes: launching, finding, signalling and supervising them.

Each component is one process started in its own session, so its pid is also its
process-group id and stopping it signals the whole group: the Java children of the
emulators' launch scripts and gunicorn's workers go with their parent. A pidfile is
trusted only while the pid it names still runs the component's command (`marker`).

`ProcessControl` holds the `LocalStack` methods that do this; below it, the helpers they
use (process groups from /proc, ports, log tails) and `supervise`, which
runs a component declared with `restart=True` (`python -m ltxv.local.stack supervise`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ltxv.local.layout import HOST, StackLayout, write_atomic

if TYPE_CHECKING:
    from ltxv.local.components import Component

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


class ProcessControl(StackLayout):
    """The `LocalStack` methods that start, find and stop its components' processes."""

    specs: dict[str, Component]
    _procs: dict[str, subprocess.Popen[bytes]]
    _echo: Callable[[str], None]

    def pid(self, name: str) -> int | None:
        """The pid its pidfile names if that process is still the component, else None."""
        pid = self._pidfile_pid(name)
        if pid is None:
            return None
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            # Our own child: Popen knows best (and it may not have exec'd its command yet).
            return pid if proc.poll() is None else None
        return pid if _is_component_process(pid, self.specs[name].marker) else None

    def _spawn(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
        """Start `command` in its own session, output appended to its log, pid in pids/."""
        log_path = self.log_file(name)
        with log_path.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- {stamp} ltxv.local.stack starts: {shlex.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                # Own session: pid == process group id, so `down` reaches its children too.
                start_new_session=True,
            )
        self._procs[name] = proc
        write_atomic(self.pid_file(name), f"{proc.pid}\n")

    def _pidfile_pid(self, name: str) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(self.pid_file(name).read_text().strip())
        return None

    def _stop(self, names: Sequence[str], quiet: bool = False) -> list[str]:
        """SIGTERM each named process group at once, SIGKILL what outlives the grace period.

        Returns the names that were running. Stale pidfiles are removed too.
        """
        running: dict[str, int] = {}
        for name in names:
            pid = self.pid(name)
            if pid is None:
                if self.pid_file(name).exists() and not quiet:
                    self._echo(f"{name:<12} was not running (stale pidfile removed)")
                self.pid_file(name).unlink(missing_ok=True)
            else:
                running[name] = pid
        began = time.monotonic()
        for name, pid in running.items():
            self._signal(name, pid, signal.SIGTERM)
        for name, pid in running.items():
            if not self._wait_group_gone(name, pid, began + self.specs[name].stop_grace):
                self._signal(name, pid, signal.SIGKILL)
                self._wait_group_gone(name, pid, time.monotonic() + STOP_GRACE)
            self.pid_file(name).unlink(missing_ok=True)
            self._procs.pop(name, None)
            if not quiet:
                took = time.monotonic() - began
                self._echo(f"{name:<12} stopped  pid {pid:<12} ({took:.1f}s)")
        return list(running)

    def _signal(self, name: str, pgid: int, sig: signal.Signals) -> None:
        _signal_group(pgid, sig)
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            # Just launched, it may not lead its own group yet: signal it directly as well.
            proc.send_signal(sig)

    def _wait_group_gone(self, name: str, pgid: int, deadline: float) -> bool:
        while True:
            proc = self._procs.get(name)
            # Polling reaps our own child, which would otherwise stay in the group as a zombie.
            ours_running = proc is not None and proc.poll() is None
            if not ours_running and not group_members(pgid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


# --- helpers -------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now (held together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_taken(port: int, grace: float = 3.0) -> bool:
    """Whether something else holds the port, as opposed to the remains of what we stopped.

    A server that has just exited leaves its connections in FIN-WAIT-1 for a moment, and
    until they move on the port cannot be bound although nobody listens on it any more.
    """
    deadline = time.monotonic() + grace
    while True:
        try:
            tcp(port)
            return True  # somebody is listening
        except OSError:
            pass
        with socket.socket() as sock:
            # Servers set SO_REUSEADDR, so a port in TIME_WAIT is free for them and for us.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
                return False
            except OSError:
                if time.monotonic() > deadline:
                    return True
        time.sleep(0.05)


def tcp(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=1):
        pass


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc/PID/stat, or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return fields[0], int(fields[2])


def _is_component_process(pid: int, marker: str) -> bool:
    """Alive, not a zombie, leading its own session, and still running our command."""
    state = _proc_state(pid)
    if state is None or state[0] == "Z":
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return os.getsid(pid) == pid and marker in cmdline
    except (OSError, UnicodeDecodeError):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group; zombies are harmless leftovers."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _proc_state(int(entry.name))
            if state is not None and state[1] == pgid and state[0] != "Z":
                members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


# --- supervisor (for components declared with restart=True) --------------------------------


def supervise(pidfile: Path, command: list[str]) -> int:
    """Run `command`, restarting it whenever it exits, until SIGTERM; like systemd's Restart=.

    The child stays in the supervisor's process group, so `down` stops both at once.
    """
    stopping = threading.Event()
    current: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        if current and current[0].poll() is None:
            current[0].send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    delay = 0.2
    while not stopping.is_set():
        began = time.monotonic()
        current[:] = [subprocess.Popen(command)]
        write_atomic(pidfile, f"{current[0].pid}\n")
        code = current[0].wait()
        pidfile.unlink(missing_ok=True)
        if stopping.is_set():
            break
        # Back off when it keeps crashing; start over once it has run for a while.
        delay = 0.2 if time.monotonic() - began > 30 else min(delay * 2, 30.0)
        entry = {"severity": "WARNING", "message": f"exited with {code}; restart in {delay:.1f}s"}
        print(json.dumps(entry), file=sys.stderr, flush=True)
        stopping.wait(delay)
    return 0


def supervised(pidfile: Path, command: list[str]) -> list[str]:
    """`command` run by `supervise`, which keeps the running child's pid in `pidfile`."""
    return [
        sys.executable,
        "-m",
        "ltxv.local.stack",
        "supervise",
        "--pidfile",
        str(pidfile),
        "--",
        *command,
    ]
