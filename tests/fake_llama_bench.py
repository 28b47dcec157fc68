"""A stand-in for `llama-bench -o json`: reads the command the measuring code built and prints the records the real
tool would (the cross product of the Sparse-K sweep flags, each depth, the prompt and the generation test), with
tokens/s from a function of (process number, settings, test) so tests can make a setting fast in some processes
and slow in others. The process number counts the earlier processes started with the same command (0, 1, ...)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from pysparsek.sparsek.settings import FIELDS, SparsekSettings

Speed = Callable[[int, SparsekSettings, str], float]


def _flags(cmd: list[str]) -> dict[str, str]:
    return {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("-")}


@dataclass
class FakeLlamaBench:
    speed: Speed
    commands: list[list[str]] = field(default_factory=list)

    def records(self, cmd: list[str]) -> list[dict]:
        process = self.commands.count(cmd)
        self.commands.append(cmd)
        flags = _flags(cmd)
        sweeps = [[(f, f.parse(v)) for v in flags[f.bench_flag].split(",")] for f in FIELDS]
        tests = [(int(flags["-p"]), 0)] if int(flags["-p"]) else []
        tests += [(0, int(flags["-n"]))] if int(flags["-n"]) else []
        out = []
        for combo in itertools.product(*sweeps):
            settings = SparsekSettings(**{f.name: v for f, v in combo})
            for depth in (int(d) for d in flags["-d"].split(",")):
                for n_prompt, n_gen in tests:
                    test = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
                    rec = {"n_prompt": n_prompt, "n_gen": n_gen, "n_depth": depth,
                           "avg_ts": self.speed(process, settings, test), "extra": flags.get("-ctk", "f16")}
                    rec.update({f.bench_field: v for f, v in combo})
                    out.append(rec)
        return out

    def run(self, cmd: list[str], **_: object) -> object:
        """In place of `pysparsek.proc.run`: what llama-bench prints (a log line, then the JSON)."""

        class Done:
            stdout = "llama-bench log line\n" + json.dumps(self.records(cmd))

        return Done()


class FakeBuild:
    backend = "cpu"

    def tool(self, name: str) -> str:
        return f"/fake/bin/{name}"
