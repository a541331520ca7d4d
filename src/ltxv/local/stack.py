"""The local stack: emulators, functions and the Eventarc bridge, all on 127.0.0.1.

    python -m ltxv.local.stack up [--components pubsub,firestore,gcs] [--timeout 60]
    python -m ltxv.local.stack down [--components ...]
    python -m ltxv.local.stack status

Each component is one process started in its own session, so its pid is also its
process-group id and `down` can signal the whole group: the Java children of the
emulators' launch scripts and gunicorn's workers go with their parent. State lives in
one directory (`.local/` in the repository root, or `LTXV_STATE_DIR`):

    logs/<name>.log   output of each component (appended across restarts)
    pids/<name>.pid   pid of each running component; `up` and `down` trust only these
    gcs/              fake-gcs-server's filesystem backend (survives restarts)
    secrets/          API key, its webhook secret, signing key (0600, generated once)
    stack.env         endpoints and credentials as shell `KEY=value` lines

`LocalStack` is importable so that tests can run an isolated copy in a temporary
directory on free ports. This module holds its start order, its readiness waits and the
command line; the rest of it lives beside it, one module per concern:

    components.py   the components, declared (`Component`, `components_for(settings)`)
    layout.py       ports, URLs, state-directory paths, secrets, the environments given
    provision.py    topics, subscriptions and buckets created in the emulators
    processes.py    launching, finding and stopping process groups; the supervisor
    executables.py  finding the programs the components run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ltxv.core.profiles import enabled_profiles
from ltxv.core.settings import Settings
from ltxv.local.components import Component, components_for, worker_component
from ltxv.local.errors import StackError, StartupFailed
from ltxv.local.layout import (
    HOST,
    REPO_ROOT,
    default_state_dir,
    read_ports,
    resolve_ports,
    write_atomic,
)
from ltxv.local.processes import (
    ProcessControl,
    free_ports,
    port_taken,
    supervise,
    supervised,
    tail,
)
from ltxv.local.provision import EmulatorResources

__all__ = [
    "REPO_ROOT",
    "LocalStack",
    "StackError",
    "StartupFailed",
    "default_state_dir",
    "main",
]

DEFAULT_TIMEOUT = 60.0  # Java emulators on two busy cores can take several seconds
RUNNING_TIMEOUT = 10.0  # for a component found running: it had its start-up already
POLL = 0.1  # seconds between readiness probes


class LocalStack(EmulatorResources, ProcessControl):
    """Starts, checks and stops the components of the local stack in one state directory.

    Everything about a running stack lives in the state directory, so two `LocalStack`
    objects on the same directory (or a CLI call and a test) see the same processes.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        ports: Mapping[str, int] | None = None,
        components: Iterable[str] | None = None,
        settings: Settings | None = None,
        functions_dir: Path | str | None = None,
        specs: Sequence[Component] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        echo: Callable[[str], None] | None = print,
    ) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.settings = settings or Settings.from_env()
        # By default the components follow the settings: a worker per enabled model.
        declared = components_for(self.settings) if specs is None else specs
        self.specs = {spec.name: spec for spec in declared}
        self.functions_dir = Path(functions_dir or REPO_ROOT / "functions").resolve()
        self.components = self._closure(components or self.specs)
        if specs is None:
            # Workers this directory started with other models enabled: `down` and
            # `status` still reach them; a plain `up` does not start them again.
            for pidfile in (self.state_dir / "pids").glob("worker-*.pid"):
                model = pidfile.stem.removeprefix("worker-")
                self.specs.setdefault(pidfile.stem, worker_component(pidfile.stem, model))
        # A stack started with other ports (tests, LTXV_*_PORT) keeps them for later calls.
        remembered = read_ports(self.ports_file) if self.ports_file.is_file() else {}
        self.ports = resolve_ports(self.specs.values(), ports or {}, remembered)
        self.timeout = timeout
        self._echo = echo or (lambda _line: None)
        # Popen objects of what this object started: polling them reaps exited children.
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def with_free_ports(cls, state_dir: Path | str, **kwargs: Any) -> LocalStack:
        """An isolated stack for tests: every port picked free by the kernel."""
        # The components with ports: the services and a worker per model.
        specs = kwargs.get("specs") or components_for(kwargs.get("settings") or Settings.from_env())
        named = [s.name for s in specs if s.default_port is not None]
        ports = dict(zip(named, free_ports(len(named)), strict=True))
        ports.update(kwargs.pop("ports", {}))
        return cls(state_dir, ports=ports, **kwargs)

    # --- lifecycle ---

    def up(self, components: Iterable[str] | None = None) -> dict[str, int | None]:
        """Start what is not running, wait until everything answers; returns name -> pid.

        Components whose pidfile names a live process are left alone but still probed.
        If anything fails, what this call started is stopped again before the error; a
        component that is not `required` is reported instead (its pid: None if stopped).
        """
        names = self._closure(components or self.components)
        try:
            enabled_profiles(self.settings.default_model, self.settings.enabled_models)
        except ValueError as exc:
            raise StackError(f"LTXV_MODELS / LTXV_DEFAULT_MODEL: {exc}") from exc
        self._make_dirs()
        self._ensure_secrets()
        self._check_ports(names)
        started: dict[str, float] = {}  # name -> launch time, for what this call started
        ready: set[str] = set()
        try:
            for name in names:
                for dependency in self.specs[name].needs:
                    self._await(dependency, started, ready)
                if self.pid(name) is None:
                    started[name] = time.monotonic()
                    self._launch(self.specs[name])
            for name in names:
                try:
                    self._await(name, started, ready)
                except StackError as exc:
                    if self.specs[name].required:
                        raise
                    self._not_required(name, exc)
            self._write_stack_env()
            write_atomic(self.ports_file, json.dumps(self.ports, sort_keys=True) + "\n")
        except BaseException:
            self._stop(list(reversed(started)), quiet=True)
            raise
        return {name: self.pid(name) for name in names}

    def down(self, components: Iterable[str] | None = None) -> None:
        """Stop what the pidfiles name (whole process groups); data stays."""
        names = self._ordered(components or self.specs)
        if not self._stop(list(reversed(names))):
            self._echo("nothing was running")

    def status(self) -> dict[str, int | None]:
        """name -> pid of every component this stack manages or finds running."""
        names = [n for n in self.specs if n in self.components or self.pid(n) is not None]
        return {name: self.pid(name) for name in names}

    # --- internals ---

    def _closure(self, names: Iterable[str]) -> list[str]:
        """The named components plus everything they need, in declaration order."""
        wanted: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name not in self.specs:
                raise StackError(f"unknown component {name!r}; known: {', '.join(self.specs)}")
            if name not in wanted:
                wanted.add(name)
                pending.extend(self.specs[name].needs)
        return [name for name in self.specs if name in wanted]

    def _ordered(self, names: Iterable[str]) -> list[str]:
        wanted = set(names)
        unknown = wanted - set(self.specs)
        if unknown:
            raise StackError(f"unknown component(s): {', '.join(sorted(unknown))}")
        return [name for name in self.specs if name in wanted]

    def _check_ports(self, names: list[str]) -> None:
        """Fail before starting anything if a port we would bind is taken by someone else."""
        to_start = [n for n in names if n in self.ports and self.pid(n) is None]
        seen: dict[int, str] = {}
        for name in names:
            if name in self.ports:
                other = seen.setdefault(self.ports[name], name)
                if other != name:
                    raise StackError(f"{name} and {other} are both set to port {self.ports[name]}")
        for name in to_start:
            port = self.ports[name]
            if port_taken(port):
                env = self.specs[name].port_env
                raise StackError(
                    f"{name}: port {HOST}:{port} is already in use by another process"
                    f" (not one this stack started); stop it"
                    + (f" or set {env} to another port" if env else "")
                )

    def _launch(self, spec: Component) -> None:
        command = spec.command(self)
        if spec.restart:
            child_pidfile = self.state_dir / (spec.child_pidfile or f"{spec.name}.child.pid")
            command = supervised(child_pidfile, command)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(spec.env(self) if spec.env else {})}
        self._spawn(spec.name, command, env, spec.cwd(self) if spec.cwd else self.state_dir)

    def _await(self, name: str, started: dict[str, float], ready: set[str]) -> None:
        """Probe a component until it answers, then run its on_ready hook (once per `up`)."""
        if name in ready:
            return
        spec = self.specs[name]
        pid = self._pidfile_pid(name)
        # Something we did not just start has had its start-up already: a short wait only.
        timeout = self.timeout if name in started else min(self.timeout, RUNNING_TIMEOUT)
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while True:
            if self.pid(name) is None:
                raise StartupFailed(
                    f"{name} exited during start-up; see {self.log_file(name)}"
                    f"\n{tail(self.log_file(name))}"
                )
            try:
                spec.probe(self)
                break
            except StackError:
                raise
            except Exception as exc:  # any failure of a probe means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                hint = (
                    ""
                    if name in started
                    else f" although running (pid {pid}): started with other ports? `down` it"
                )
                raise StackError(
                    f"{name} did not become ready within {timeout:.0f}s{hint} "
                    f"({last_error}); see {self.log_file(name)}\n{tail(self.log_file(name))}"
                )
            time.sleep(POLL)  # the interval between probes, not a guess at start-up time
        if spec.on_ready:
            spec.on_ready(self)
        ready.add(name)
        address = f"{HOST}:{self.ports[name]}" if name in self.ports else "-"
        if name in started:
            note = f"({time.monotonic() - started[name]:.1f}s)"
        else:
            note = f"(already running, pid {pid})"
        self._echo(f"{name:<12} ready    {address:<16} {note}")

    def _not_required(self, name: str, error: StackError) -> None:
        """A component the stack can run without did not come up: say so, and stop it if
        it failed rather than being slow (a worker crash-looping on weights it cannot
        load would only burn CPU)."""
        if isinstance(error, StartupFailed):
            self._stop([name], quiet=True)
            what = f"stopped: start it again with `ltxv dev up --components {name}`"
        else:
            what = "left running: it may still get ready"
        first = str(error).splitlines()[0]
        self._echo(f"{name:<12} NOT READY: {first}\n  {what} (log: {self.log_file(name)})")


# --- command line --------------------------------------------------------------------------


def _components_arg(raw: str | None) -> list[str] | None:
    return [part.strip() for part in raw.split(",") if part.strip()] if raw else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ltxv.local.stack", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start the stack"), ("down", "stop it"), ("status", "show it")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--components", help="comma-separated subset (default: all)")
        sub.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per component")
    sup = commands.add_parser("supervise")  # internal: runs restart=True components
    sup.add_argument("--pidfile", type=Path, required=True)
    sup.add_argument("child", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "supervise":
        child = args.child[1:] if args.child[:1] == ["--"] else args.child
        return supervise(args.pidfile, child)

    stack = LocalStack(timeout=args.timeout)
    selected = _components_arg(args.components)
    try:
        if args.command == "up":
            stack.up(selected)
            print(f"\nAPI      {stack.api_url}")
            print(f"Web page {stack.api_url}/  (open it and enter the API key below)")
            print(f"API key  {stack.api_key}")
            print(f"env      {stack.stack_env_file}")
        elif args.command == "down":
            stack.down(selected)
        else:
            pids = stack.status()
            for name, pid in pids.items():
                if selected and name not in selected:
                    continue
                address = f"{HOST}:{stack.ports[name]}" if name in stack.ports else "-"
                state = f"running  {address:<16} pid {pid}" if pid else "stopped"
                print(f"{name:<12} {state}")
            shown = [pid for name, pid in pids.items() if not selected or name in selected]
            return 0 if all(shown) else 3
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
