"""`python -m experiments.run <args>` many times without paying its imports each time.

A server process imports `experiments.run` (torch, Hydra, every experiment module) once and, for
every command it is sent, forks a child that runs the module as `__main__` with those arguments, its
standard output and error going to files, and exits with the command's own exit status. Each command
still runs in a process of its own (its exit status, its stderr, nothing shared with the next); only
the imports are paid once. The server computes nothing itself, so no thread pool exists when it
forks. The child calls `experiments.run.main()` as `python -m experiments.run` does. POSIX only (the tests that use it fall back to plain subprocesses elsewhere).

Protocol: one JSON object {args, env} per line on stdin (the arguments, and variables added to the
environment of that command only); one JSON object {returncode, stdout, stderr} per line on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve() -> None:
    import experiments.run as entry  # the imports every command shares

    out = os.fdopen(os.dup(1), "w")  # the protocol's channel, apart from the children's stdout
    for line in sys.stdin:
        request = json.loads(line)
        args, env = (request, {}) if isinstance(request, list) else (request["args"], request.get("env", {}))
        with tempfile.TemporaryDirectory() as tmp:
            paths = [os.path.join(tmp, name) for name in ("stdout", "stderr")]
            pid = os.fork()
            if pid == 0:  # the command
                os.environ.update(env)
                for fd, path in zip((1, 2), paths):
                    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    os.dup2(target, fd)
                sys.argv = [str(ROOT / "experiments" / "run.py"), *args]
                task = entry._hydra_main
                while hasattr(task, "__wrapped__"):
                    task = task.__wrapped__
                task.__module__ = "__main__"  # as under `python -m`: Hydra finds ../configs from the file, not as a module
                code = 0
                try:
                    entry.main()
                except SystemExit as stop:
                    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                    if not isinstance(stop.code, int) and stop.code is not None:
                        print(stop.code, file=sys.stderr)
                except BaseException:  # an uncaught error, reported as Python would
                    import traceback

                    traceback.print_exc()
                    code = 1
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            texts = [Path(p).read_text() for p in paths]
        out.write(json.dumps(dict(returncode=os.waitstatus_to_exitcode(status), stdout=texts[0], stderr=texts[1])) + "\n")
        out.flush()


class Server:
    """The client: `run(args)` -> subprocess.CompletedProcess, as `subprocess.run` of the command gives."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_server"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """The command `python -m experiments.run <args>`, with `env` added to the server's environment."""
        self.proc.stdin.write(json.dumps({"args": list(args), "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return subprocess.CompletedProcess(args, answer["returncode"], answer["stdout"], answer["stderr"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
