"""Run one fuzz target under atheris for a while, and sort what it finds (behind `ops/fuzz`).

The run starts from the target's corpus less its known holes (targets.KNOWN), so that it looks
for new ones, and grows a working corpus of its own. Each crash is replayed in this process and
classified by what escapes: one that escapes as a known hole does is "known again"; any other is
new, and (with keep) copied into tests/fuzz/corpus/TARGET/ as crash-<sha1>, where the normal
test suite replays it from then on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import targets as T  # noqa: E402


@dataclass
class FuzzResult:
    target: str
    ran: bool = False
    new: list[str] = field(default_factory=list)  # "file: escape"
    known_again: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)  # inputs libFuzzer found slow (over 10 s)
    stats: dict[str, str] = field(default_factory=dict)
    stderr: str = ""


def fuzz(target: str, seconds: int, work: Path, *, keep: bool = True,
         flags: list[str] | None = None) -> FuzzResult:
    corpus, seeds, artifacts = work / "corpus", work / "seeds", work / "artifacts"
    for folder in (corpus, artifacts):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(seeds, ignore_errors=True)
    seeds.mkdir(parents=True)
    known = {name.split("/", 1)[1] for name in T.KNOWN if name.startswith(f"{target}/")}
    for path in (T.CORPUS / target).iterdir():
        if path.name not in known:
            shutil.copyfile(path, seeds / path.name)
    done = subprocess.run(
        [sys.executable, str(T.HERE / "targets.py"), target, f"-max_total_time={seconds}",
         f"-artifact_prefix={artifacts}/", "-print_final_stats=1", *(flags or []),
         str(corpus), str(seeds)],
        capture_output=True, text=True, timeout=seconds + 300, check=False,
        env={**os.environ, "PYTHONPATH": str(T.HERE.parents[1])})
    result = FuzzResult(target, stderr=done.stderr)
    result.stats = dict(line.split(":", 3)[2:4] for line in done.stderr.splitlines()
                        if line.startswith("stat::") and line.count(":") >= 3)
    holes = {T.escape(target, (T.CORPUS / target / name).read_bytes()) for name in known}
    for crash in sorted(artifacts.iterdir()):
        if crash.name.startswith("slow-unit-"):  # slow under load, not a failure: noted only
            result.slow.append(crash.name)
            crash.unlink()
            continue
        what = T.escape(target, crash.read_bytes())
        label = f"{crash.name}: {what or 'no escape when replayed (a timeout or an oom?)'}"
        if what is not None and what in holes:
            result.known_again.append(label)
        else:
            result.new.append(label)
            if keep:
                shutil.copyfile(crash, T.CORPUS / target / crash.name)
        crash.unlink()
    # it ran to its end, or stopped at a crash
    result.ran = "Done" in done.stderr or bool(result.new or result.known_again)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/fuzz", description="Coverage-guided fuzzing.")
    parser.add_argument("target", choices=[*T.TARGETS, "all"])
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--work", default="var/fuzz", help="working corpora (default var/fuzz)")
    args, flags = parser.parse_known_args(argv)
    names = list(T.TARGETS) if args.target == "all" else [args.target]
    failed = False
    for name in names:
        print(f"ops/fuzz: {name} for {args.seconds} s", flush=True)
        result = fuzz(name, args.seconds, Path(args.work) / name, flags=flags)
        runs = result.stats.get("number_of_executed_units", "?").strip()
        speed = result.stats.get("average_exec_per_sec", "?").strip()
        print(f"{name}: {runs} inputs ({speed}/s), {len(result.new)} new crashes, "
              f"{len(result.known_again)} known holes found again", flush=True)
        for label in result.new:
            print(f"  NEW {label}  (kept in tests/fuzz/corpus/{name}/)", flush=True)
        for label in result.slow:
            print(f"  slow {label} (over libFuzzer's 10 s: time it alone before suspecting it)",
                  flush=True)
        for label in result.known_again[:3]:
            print(f"  known {label}", flush=True)
        if not result.ran:
            print(result.stderr[-2000:], file=sys.stderr)
        failed = failed or bool(result.new) or not result.ran
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
