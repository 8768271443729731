"""`carbon-ledger`: the command-line way in. Reads print tables, or JSON with --json."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from api import cli_writes
from api.access_log import FORMATS as LOG_FORMATS
from api.access_log import LEVELS as LOG_LEVELS
from domain import commands as C
from domain.errors import CODES, DomainError
from domain.genesis import EDITIONS, LATEST_EDITION, Genesis
from ledger import as_of as as_of_values
from ledger import demo as demo_story
from ledger import narration
from ledger.application import Registry
from ledger.audit import AuditReport, audit_database, audit_export, export
from ledger.checkpoints import checkpoint_json, witness
from ledger.keys import Keyring, default_keys_dir, public_text, write_private
from ledger.keys import generate as generate_key
from ledger.operations import backup, migrate, restore
from ledger.projections import Progress as ProjectionProgress
from ledger.proofs import ProofError, verify_bundle
from ledger.proofs import bundle as proof_bundle
from ledger.runtime import tune_collector
from ledger.store import (
    DEFAULT_DB,
    ENV_DB,
    db_url,
    require_not_served,
    require_registry,
    served_by,
    serving,
    shown_url,
)

# Piped output is not cut to 80 columns: tables stay whole in logs and CI. On a terminal, rich
# wraps sentences between words at its width (the terminal itself would cut words in two).
out = Console(highlight=False, soft_wrap=not sys.stdout.isatty(),
              width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3  # verify could not run to its end: one of the audit's processes failed


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def _keys_dir(args: argparse.Namespace) -> Path:
    return Path(args.keys) if getattr(args, "keys", None) else default_keys_dir(db_url(args.db))


_opened: list[Registry] = []


def _open(args: argparse.Namespace, create: bool = False) -> Registry:
    """The registry of --db; only `init` may make one (any other command on a missing or empty
    store is refused with no_registry)."""
    app = Registry(args.db, keyring=Keyring(_keys_dir(args)), create=create)
    _opened.append(app)  # closed when the command ends, so its files are settled
    return app


def _progress_bar(label: str) -> tuple[Progress, Callable[[ProjectionProgress], None]]:
    """A progress bar fed by a projection's catch-up."""
    bar, update = _audit_progress(label, "events")
    return bar, lambda p: update(p.done, p.total)


# Commands ---------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    app = _open(args, create=True)
    if app.log_position() > 0:
        raise DomainError("already_exists", f"the registry at {app.url} is initialised already; "
                          "init never overwrites a registry")
    keyring = app.keyring
    assert keyring is not None
    if keyring.has(args.operator):
        raise DomainError("already_exists", f"an operator key exists at {keyring.path(args.operator)}; "
                          "init never overwrites an operator key")
    keyring.create(args.operator)
    outcome = app.submit("initialise", args.operator, f"init-{args.operator}",
                         {"origin": args.origin, "operator_id": args.operator, "name": args.name,
                          "rules_edition": LATEST_EDITION})
    if args.json:
        _print_json({"db": app.url, "keys": str(keyring.folder), **outcome})
    else:
        out.print(f"initialised registry [bold]{args.origin}[/] at {app.url}; operator "
                  f"[bold]{args.operator}[/], key {outcome['key_id']} in {keyring.folder}")
        out.print(f"operator public key: {outcome['operator_key']}")
        out.print(f"rules edition {outcome['rules_edition']}")
    return 0


def cmd_adopt_rules(args: argparse.Namespace) -> int:
    app = _open(args)
    genesis = app.projection().genesis
    if genesis is None:
        raise DomainError("unknown_participant", "the registry is not initialised (run init)")
    outcome = app.submit("adopt_rules", genesis.operator_id, f"rules/edition-{args.edition}",
                         {"edition": args.edition})
    if args.json:
        _print_json(outcome)
    else:
        out.print(f"the registry follows rules edition {outcome['edition']} (was "
                  f"{outcome['previous_edition']}) for every command after position "
                  f"{outcome['position']:,}: {EDITIONS[outcome['edition']]}")
    return 0


def cmd_operator_key(args: argparse.Namespace) -> int:
    genesis = _open(args).projection().genesis
    if genesis is None:
        raise DomainError("unknown_participant", "the registry is not initialised (run init)")
    if args.json:
        _print_json({"origin": genesis.origin, "operator_id": genesis.operator_id,
                     "operator_key": genesis.operator_key})
    else:
        sys.stdout.write(genesis.operator_key + "\n")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    folder = _keys_dir(args)
    key = generate_key()
    write_private(folder / f"{args.participant}.key", key)
    if args.json:
        _print_json({"participant": args.participant, "public_key": public_text(key),
                     "private_key_file": str(folder / f"{args.participant}.key")})
    else:
        out.print(f"private key written to {folder / (args.participant + '.key')} (mode 0600)")
        sys.stdout.write(public_text(key) + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    app = _open(args)
    projection = app.projection()
    if len(projection.participants) > 1 or projection.tickets:
        raise DomainError("already_exists", f"the registry at {app.url} is not empty; the demo "
                          "loads into a registry just made by init")
    # The genesis is init's: the story's own initialise is skipped.
    steps = [s for s in demo_story.story() if s[0] != "initialise"]
    done: list[narration.Step] = []
    refusals = 0
    started = time.perf_counter()
    for name, actor, command_id, cargs in steps:
        try:
            outcome = app.submit(name, actor, command_id, cargs)
            done.append(narration.Step(name, actor, command_id, cargs, outcome))
        except DomainError as e:
            expected = demo_story.EXPECTED_REFUSALS.get(command_id)
            if expected != e.code:
                raise
            refusals += 1
            done.append(narration.Step(name, actor, command_id, cargs, refusal=(e.code, e.message)))
    elapsed = time.perf_counter() - started
    checkpointer = app.operator_checkpointer()
    if checkpointer is not None:
        checkpointer.make()
        assert app.keyring is not None
        witness(app, "fujian-eco", app.keyring.get("fujian-eco"),
                _keys_dir(args) / "fujian-eco.witness.json", _genesis_key(app))
    projection = app.projection()

    def name_of(participant_id: str) -> str:
        try:
            return projection.participant(participant_id)["name"]
        except DomainError:
            return participant_id

    story = narration.narrate(done, name_of)
    if args.json:
        _print_json({"db": app.url, "commands": len(steps), "refused": refusals,
                     "position": projection.position,
                     "story": [{"chapter": line.chapter, "text": line.text,
                                "refused": line.refused} for line in story],
                     "balances": {h: projection.balances(h) for h in DEMO_HOLDERS}})
        return 0
    _print_story(story)
    out.print(f"{len(steps)} commands, {refusals} refused as the story expects, in "
              f"{elapsed:.2f} s; log position {projection.position}")
    out.print()
    for holder in DEMO_HOLDERS:
        _print_balances(projection.balances(holder))
    _print_ticket(projection.ticket("SM-0000002"))
    for p in projection.pledge_register():
        out.print(f"pledge [bold]{p['pledge_id']}[/] {p['pledgor']} → {p['pledgee']}: {p['status']}, "
                  f"{p['pledged_t']:,} t pledged, {p['impaired_t']:,} t impaired")
    _print_compliance(projection.compliance_view("tonghai-nickel", "fujian_ets", "2021"))
    return 0


def _print_story(lines: list[narration.Line]) -> None:
    """Each chapter under its heading; a sentence wraps under itself, not under the bullet."""
    chapter = None
    grid: Table | None = None
    for line in lines:
        if line.chapter != chapter:
            if grid is not None:
                out.print(grid)
            chapter = line.chapter
            out.print(f"[bold]{escape(chapter)}[/]")
            grid = Table.grid(padding=(0, 1))
            grid.add_column(width=2, justify="right")
            grid.add_column(overflow="fold")
        assert grid is not None
        mark = "[red]✗[/]" if line.refused else "·"
        grid.add_row(mark, f"[red]{escape(line.text)}[/]" if line.refused else escape(line.text))
    if grid is not None:
        out.print(grid)
    out.print()


DEMO_HOLDERS = ("changkou-village", "jinsen-carbon", "tonghai-nickel")


def _as_of(args: argparse.Namespace, app: Registry):
    found = as_of_values.resolve(app.recorder, args.as_of)
    if found is not None and found.moment is not None:
        err.print(f"as of {args.as_of} ({found.moment.isoformat()}): log position "
                  f"{found.position:,}, the last command recorded by then"
                  + (f" (at {found.recorded_at.astimezone(as_of_values.CHINA).isoformat()})"
                     if found.recorded_at else ""))
    return app.projection(as_of=None if found is None else found.position)


def _remote(args: argparse.Namespace) -> Any:
    """A signed HTTP client for --url, acting as --as with its key from --keys (or unsigned)."""
    from api.client import Client

    who = getattr(args, "actor", None)
    key = None
    if who:
        folder = Path(args.keys) if getattr(args, "keys", None) else None
        if folder is None:
            raise DomainError("invalid_argument", "--as needs --keys DIR holding <participant>.key")
        key = Keyring(folder).get(who)
    return Client(args.url, who, key)


def _remote_get(args: argparse.Namespace, path: str, **params: Any) -> Any:
    from api.client import ApiError

    client = _remote(args)
    try:
        return client.get(path, params)
    except ApiError as e:
        raise DomainError(e.code if e.code in CODES else "invalid_argument", e.detail) from None
    finally:
        client.close()


def cmd_balances(args: argparse.Namespace) -> int:
    if getattr(args, "url", None):
        view = _remote_get(args, f"/v1/accounts/{args.holder}/balances", as_of=args.as_of)
    else:
        view = _as_of(args, _open(args)).balances(args.holder)
    if args.json:
        _print_json(view)
    else:
        _print_balances(view)
    return 0


def _print_balances(view: dict[str, Any]) -> None:
    t = view["totals"]
    table = Table(title=f"{view['holder']} ({view['name']}) as of position {view['as_of']}"
                  + (" — FROZEN" if view["frozen"] else ""))
    for col in ("ticket", "standard", "available t", "pledged t", "retired t", "cancelled t"):
        table.add_column(col, justify="right" if col.endswith(" t") else "left")
    for row in view["tickets"]:
        table.add_row(row["ticket_no"], row["standard"], f"{row['available_t']:,}",
                      f"{row['pledged_t']:,}", f"{row['retired_t']:,}", f"{row['cancelled_t']:,}")
    table.add_row("[bold]total[/]", "", f"{t['available_t']:,}", f"{t['pledged_t']:,}",
                  f"{t['retired_t']:,}", f"{t['cancelled_t']:,}")
    out.print(table)


def cmd_ticket(args: argparse.Namespace) -> int:
    if getattr(args, "url", None):
        view = _remote_get(args, f"/v1/tickets/{args.ticket_no}", as_of=args.as_of)
    else:
        view = _as_of(args, _open(args)).ticket(args.ticket_no)
    if args.json:
        _print_json(view)
    else:
        _print_ticket(view)
    return 0


def _print_ticket(view: dict[str, Any]) -> None:
    out.print(f"ticket [bold]{view['ticket_no']}[/] {view['standard']} project {view['project_id']} "
              f"{view['period_start']}..{view['period_end']}: issued {view['issued_t']:,} t = "
              f"{view['available_t']:,} available + {view['pledged_t']:,} pledged + "
              f"{view['retired_t']:,} retired + {view['cancelled_t']:,} cancelled")
    # Serials as numbers within the ticket named above, and no vertical rules: the demo's blocks
    # fit 80 columns whole, with no id cut short.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("serials", "t", "holder", "state", "by"):
        table.add_column(col, justify="right" if col == "t" else "left", no_wrap=True)
    prefix = f"{view['ticket_no']}-"
    for b in view["blocks"]:
        by = b.get("pledge_id") or b.get("retirement_id") or b.get("cancelled_by") or ""
        table.add_row(f"{b['first_serial'].removeprefix(prefix)}–"
                      f"{b['last_serial'].removeprefix(prefix)}", f"{b['quantity_t']:,}",
                      b["holder"], b["state"], by)
    out.print(table)


def cmd_pledges(args: argparse.Namespace) -> int:
    if getattr(args, "url", None):
        view = _remote_get(args, "/v1/pledges", bank=args.bank, as_of=args.as_of)
    else:
        projection = _as_of(args, _open(args))
        if args.bank:
            projection._require_participant(args.bank)
        view = projection.pledge_register(args.bank)
    if args.json:
        _print_json(view)
        return 0
    table = Table(title="pledge register" + (f" of {args.bank}" if args.bank else ""))
    for col in ("pledge", "pledgor", "pledgee", "status", "pledged t", "impaired t", "released t",
                "enforced t", "secured ¥", "maturity"):
        table.add_column(col, justify="right" if col.endswith((" t", "¥")) else "left")
    for p in view:
        table.add_row(p["pledge_id"], p["pledgor"], p["pledgee"], p["status"], f"{p['pledged_t']:,}",
                      f"{p['impaired_t']:,}", f"{p['released_t']:,}", f"{p['enforced_t']:,}",
                      p["secured_amount"], p["maturity"])
    out.print(table)
    return 0


def cmd_compliance(args: argparse.Namespace) -> int:
    if getattr(args, "url", None):
        view = _remote_get(args, f"/v1/compliance/{args.entity}/{args.scheme}/{args.period}",
                           as_of=args.as_of)
    else:
        view = _as_of(args, _open(args)).compliance_view(args.entity, args.scheme, args.period)
    if args.json:
        _print_json(view)
    else:
        _print_compliance(view)
    return 0


def _print_compliance(view: dict[str, Any]) -> None:
    if not view["emissions_recorded"]:
        out.print(f"no verified emissions recorded for {view['entity']} in {view['scheme']} "
                  f"{view['period']}")
        return
    out.print(f"compliance {view['entity']} {view['scheme']} {view['period']}: verified "
              f"emissions {view['verified_emissions_t']:,} t")
    table = Table()
    for col in ("offsets", "limit", "limit t", "used t", "remaining t"):
        table.add_column(col, justify="left" if col == "offsets" else "right")
    for std, s in view["standards"].items():
        table.add_row(std, f"{s['limit_bp'] / 100:g}%", f"{s['limit_t']:,}", f"{s['used_t']:,}",
                      f"{s['remaining_t']:,}")
    table.add_row("[bold]all[/]", f"{view['limit_bp'] / 100:g}%", f"{view['limit_t']:,}",
                  f"{view['used_t']:,}", f"{view['remaining_t']:,}")
    out.print(table)


def cmd_history(args: argparse.Namespace) -> int:
    if getattr(args, "url", None):
        if not args.ticket or args.as_of is not None:
            raise DomainError("invalid_argument", "over HTTP, history is per ticket (--ticket) and "
                              "as of now (no --as-of)")
        view = _remote_get(args, f"/v1/tickets/{args.ticket}/history")
    else:
        view = _as_of(args, _open(args)).history(ticket=args.ticket, holder=args.holder)
    if args.json:
        _print_json(view)
        return 0
    table = Table(title=f"history of {args.ticket or args.holder}")
    for col in ("pos", "time", "event", "actor", "t", "details"):
        table.add_column(col, justify="right" if col in ("pos", "t") else "left")
    for e in view:
        details = {k: v for k, v in e.items() if k not in (
            "position", "time", "event", "actor", "command_id", "quantity_t", "serials")}
        table.add_row(str(e["position"]), e["time"][:19], e["event"], e["actor"],
                      f"{e.get('quantity_t', ''):,}" if "quantity_t" in e else "",
                      ", ".join(f"{k}={v}" for k, v in details.items()))
    out.print(table)
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    app = _open(args)
    bar, update = _progress_bar("rebuilding projections")
    started = time.perf_counter()
    with bar:
        projection = app.rebuild(progress=update)
    elapsed = time.perf_counter() - started
    rate = projection.events_applied / elapsed if elapsed > 0 else 0.0
    report = {"events": projection.position, "applied": projection.events_applied,
              "seconds": round(elapsed, 3), "events_per_s": int(rate),
              "tickets": len(projection.tickets), "participants": len(projection.participants),
              "pledges": len(projection.pledges)}
    if args.json:
        _print_json(report)
    else:
        out.print(f"rebuilt projections from {report['events']:,} events in {elapsed:.2f} s "
                  f"({report['events_per_s']:,} events/s): {report['tickets']:,} tickets, "
                  f"{report['participants']:,} participants, {report['pledges']:,} pledges")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    app = _open(args)
    checkpointer = app.operator_checkpointer()
    if checkpointer is None:
        raise DomainError("unknown_key", f"the operator's private key is not in {_keys_dir(args)}; "
                          "only the operator signs checkpoints")
    checkpointer.make()
    view = checkpoint_json(app)
    if args.json:
        _print_json(view)
    else:
        out.print(f"checkpoint at size {view['size']:,}: root {view['root']}, state "
                  f"{view['state_root']}")
    return 0


def cmd_witness(args: argparse.Namespace) -> int:
    app = _open(args)
    keyring = app.keyring
    assert keyring is not None
    operator_key = args.operator_key or _genesis_key(app)
    state_file = Path(args.state) if args.state else _keys_dir(args) / f"{args.witness}.witness.json"
    result = witness(app, args.witness, keyring.get(args.witness), state_file, operator_key)
    if args.json:
        _print_json(result)
    else:
        out.print(f"{result['witness']} cosigned the checkpoint at size {result['size']:,} "
                  f"(consistent with size {result['previous_size']:,}; state in {state_file})")
    return 0


def _genesis_key(app: Registry) -> str:
    genesis = app.projection().genesis
    if genesis is None:
        raise DomainError("unknown_participant", "the registry is not initialised (run init)")
    return genesis.operator_key


class _CountColumn(ProgressColumn):
    """"1,234/5,678 records"; before the total is known (the first report), "1,234 records"."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        done = f"{int(task.completed):,}"
        return Text(f"{done}/{int(task.total):,} {self.unit}" if task.total is not None
                    else f"{done} {self.unit}")


def _audit_progress(label: str, unit: str = "records") -> tuple[Progress, Callable[[int, int], None]]:
    """A progress bar on stderr (shown on a terminal only), fed with (done, total)."""
    bar = Progress(TextColumn(label), BarColumn(), TaskProgressColumn(), _CountColumn(unit),
                   TimeRemainingColumn(), console=err, transient=False,
                   disable=not err.is_terminal)
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _print_audit(report: AuditReport, as_json: bool) -> int:
    if as_json:
        _print_json(report.to_dict())
    elif report.ok:
        out.print(f"[green]verified[/]: {report.records:,} records, {report.commands:,} commands, "
                  f"{report.signatures:,} signatures, {report.checkpoints:,} checkpoints, "
                  f"{report.cosignatures:,} cosignatures in {report.seconds:.2f} s "
                  f"({report.events_per_s:,} events/s); root {report.root}")
        for note in report.notes:
            out.print(f"note: {note}")
        out.print("rules: " + ", ".join(
            f"edition {e['edition']} " + (f"from position {e['adopted_at']:,}" if e["adopted_at"]
                                          else "from the start")
            for e in report.rules_editions))
    else:
        assert report.failure is not None
        err.print(f"[red]verification failed[/] at {report.failure}")
        out.print(f"checked {report.records:,} records before the failure")
    return 0 if report.ok else EXIT_REFUSED


def cmd_verify(args: argparse.Namespace) -> int:
    app = _open(args)
    pinned = args.operator_key
    genesis = app.get_aggregate(Genesis, Genesis.id_for())
    if pinned is None and genesis is not None and app.keyring is not None and app.keyring.folder:
        # The operator's public key file beside its private key, written by `init`.
        pub = app.keyring.folder / f"{genesis.operator_id}.pub"
        if pub.exists():
            pinned = pub.read_text(encoding="ascii").strip()
    bar, update = _audit_progress("verifying")
    try:
        with bar:
            report = audit_database(app.recorder, pinned, args.workers, update)
    except RuntimeError as e:
        return _audit_incomplete(e, args.json)
    return _print_audit(report, args.json)


def _audit_incomplete(e: RuntimeError, as_json: bool) -> int:
    """An audit that could not finish (a reader, signature or commitment process failed): no
    verdict either way."""
    what = f"the audit did not finish, so nothing is verified: {e}"
    if as_json:
        _print_json({"error": {"code": "audit_incomplete", "message": what}})
    err.print(f"[red]error[/] audit_incomplete: {what}")
    return EXIT_INCOMPLETE


def cmd_export(args: argparse.Namespace) -> int:
    app = _open(args)
    bar, update = _audit_progress("exporting")
    with bar:
        result = export(app.recorder, Path(args.file), update)
    if args.json:
        _print_json(result)
    else:
        out.print(f"exported {result['records']:,} records to {result['file']} "
                  f"({result['bytes']:,} bytes)")
    return 0


def cmd_verify_export(args: argparse.Namespace) -> int:
    bar, update = _audit_progress("verifying export")
    try:
        with bar:
            report = audit_export(Path(args.file), args.operator_key, args.workers, update)
    except RuntimeError as e:
        return _audit_incomplete(e, args.json)
    except DomainError:
        raise  # the file cannot be read: an error with its code
    except Exception as e:  # noqa: BLE001 - a file the audit cannot cope with gets no verdict, not a traceback
        return _audit_incomplete(RuntimeError(f"it stopped on {type(e).__name__}: {e} (please "
                                              "report this with the file)"), args.json)
    return _print_audit(report, args.json)


def cmd_proof(args: argparse.Namespace) -> int:
    _print_json(proof_bundle(_open(args), args.kind, args.id))
    return 0


def cmd_verify_proof(args: argparse.Namespace) -> int:
    try:
        try:
            data = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except RecursionError:  # thousands of levels deep: no bundle is
            raise ProofError(f"{args.file} nests its JSON thousands of levels deep: it is not a "
                             "proof bundle or certificate") from None
        result = verify_bundle(data, args.operator_key)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ProofError) as e:
        if args.json:
            _print_json({"ok": False, "error": str(e)})
        err.print(f"[red]proof rejected[/]: {e}")
        return EXIT_REFUSED
    if args.json:
        _print_json(result)
        return 0
    if result["kind"] == "pledge":
        out.print(f"[green]proven[/] as of checkpoint {result['checkpoint_size']:,} of "
                  f"{result['origin']}: pledge {result['id']} by {result['pledgor']} to "
                  f"{result['pledgee']} is {result['status']}; {result['pledged_t']:,} t pledged, "
                  f"{result['impaired_t']:,} t impaired")
    else:
        out.print(f"[green]proven[/] as of checkpoint {result['checkpoint_size']:,} of "
                  f"{result['origin']}: retirement {result['id']} of {result['quantity_t']:,} t by "
                  f"{result['holder']} for {result['purpose']}, beneficiary {result['beneficiary']}")
    for u in result["units"]:
        out.print(f"  {u['first_serial']}..{u['last_serial']}  {u['quantity_t']:,} t")
    if result["cosigned_by"]:
        out.print(f"cosigned by {', '.join(result['cosigned_by'])}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from api.limits import limits_from
    from api.server import ENV_ALLOW_EMPTY, ENV_KEYS
    from api.serving import redacted, serve

    url = db_url(args.db)
    if args.allow_empty:
        os.environ[ENV_ALLOW_EMPTY] = "1"
    else:
        require_registry(url)
    os.environ[ENV_DB] = url
    os.environ[ENV_KEYS] = str(_keys_dir(args))
    banner = (f"serving {redacted(url)} at http://{args.host}:{args.port} ({args.workers} "
              f"worker{'s' if args.workers != 1 else ''}); docs at /docs")
    with serving(url):  # so that ops/demo does not delete the file under this server
        return serve(host=args.host, port=args.port, workers=args.workers,
                     log_level=args.log_level, log_format=args.log_format, banner=banner,
                     limits=limits_from(args))


def cmd_status(args: argparse.Namespace) -> int:
    """Where the registry is, whether it holds one, and which processes serve it; never makes one."""
    url = db_url(args.db)
    try:
        require_registry(url)
        problem = None
    except DomainError as e:
        if e.code != "no_registry":
            raise
        problem = e.message
    records = origin = None
    if problem is None:
        app = _open(args)
        records = app.log_position()
        genesis = app.projection().genesis
        origin = genesis.origin if genesis is not None else None
    if args.idle:
        require_not_served(url)
    pids = served_by(url)
    if args.json:
        _print_json({"db": shown_url(url), "registry": problem is None, "records": records,
                     "origin": origin, "served_by": pids, "problem": problem})
    else:
        if problem is None:
            out.print(f"registry {origin} at {shown_url(url)}: {records:,} records")
        else:
            out.print(problem)
        out.print(f"served by process {', '.join(map(str, pids))}" if pids else "not served")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    source = Registry(args.source, create=False)
    _opened.append(source)
    target = Registry(args.target)
    _opened.append(target)
    bar, update = _audit_progress("migrating")
    with bar:
        result = migrate(source, target, update)
    report = audit_database(target.recorder, _genesis_key(source), args.workers)
    result["verified"] = report.ok
    if args.json:
        _print_json({**result, "audit": report.to_dict()})
    else:
        out.print(f"copied {result['records']:,} records, {result['checkpoints']} checkpoints and "
                  f"{result['cosignatures']} cosignatures from {source.url} to {target.url}; "
                  f"root {result['root']} on both")
    if not report.ok:
        return _print_audit(report, False)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    result = backup(db_url(args.db), Path(args.file))
    _print_json(result) if args.json else out.print(
        f"backed up {db_url(args.db)} to {result['file']} ({result['bytes']:,} bytes, {result['kind']})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    result = restore(Path(args.file), db_url(args.db))
    _print_json(result) if args.json else out.print(f"restored {args.file} into {result['db']}; "
                                                    "run verify")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Rotate a participant's key with the keys in --keys: a new key is made, countersigns, and
    replaces the old file (kept as <id>.key.N.old)."""
    app = _open(args)
    actor = args.actor or args.participant
    outcome = app.submit("rotate_key", actor, args.command_id or f"rotate/{args.participant}/"
                         f"{int(time.time())}", {"participant_id": args.participant})
    _print_json(outcome) if args.json else out.print(
        f"{args.participant}'s key is now {outcome['key_id']} (was {outcome['old_key_id']})")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Execute one command given as JSON: {"command", "actor", "command_id", "args"}."""
    raw = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    try:
        data = json.loads(raw, parse_float=_refuse_float)
    except json.JSONDecodeError as e:
        raise DomainError("invalid_argument", f"the command is not valid JSON: {e}") from None
    command = C.parse(data)  # refuse malformed input before signing anything
    if getattr(args, "url", None):
        from api.client import ApiError

        args.actor = command.actor
        client = _remote(args)
        try:
            consenting = Keyring(Path(args.keys)) if args.consent and getattr(args, "keys", None) \
                else None
            if args.consent and consenting is None:
                raise DomainError("invalid_argument", "--consent needs --keys DIR holding the "
                                  "consenting parties' keys")
            outcome = client.command(command.name, data["args"], command.command_id,
                                     consents=[consenting.get(c) for c in args.consent]
                                     if consenting is not None else None)
        except ApiError as e:
            raise DomainError(e.code if e.code in CODES else "invalid_argument", e.detail) from None
        finally:
            client.close()
    else:
        # An `initialise` makes the registry, as init does; any other command needs one.
        outcome = _open(args, create=command.name == "initialise").submit(
            command.name, command.actor, command.command_id, data["args"],
            consents=args.consent or None)
    _print_json(outcome)
    return 0


def _refuse_float(text: str) -> Any:
    raise DomainError("invalid_argument", f"{text} is a fractional number; tonnes are integers and "
                      "money is a decimal string like \"15.00\"")


# Parsing -------------------------------------------------------------------------------------

def _version() -> str:
    try:
        return importlib.metadata.version("carbon-ledger")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS,
                        help=f"database URL (default: ${ENV_DB} or {DEFAULT_DB})")
    common.add_argument("--keys", default=argparse.SUPPRESS, metavar="DIR",
                        help="folder of private key files (default: beside a SQLite file, "
                        "<db file>.keys)")
    reads = argparse.ArgumentParser(add_help=False)
    reads.add_argument("--json", action="store_true", help="print machine-readable JSON")
    remote_write = argparse.ArgumentParser(add_help=False)
    remote_write.add_argument("--url", default=None,
                              help="send to a registry over HTTP, signed with the actor's key from --keys")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", default=None, help="ask a registry over HTTP instead of --db")
    remote.add_argument("--as", dest="actor", default=None, metavar="PARTICIPANT",
                        help="with --url: sign as this participant (its key from --keys)")
    as_of = argparse.ArgumentParser(add_help=False)
    as_of.add_argument("--as-of", default=None, metavar="WHEN",
                       help="answer as of a log position, or an ISO 8601 date or date-time "
                       "(2023-12-31 is the end of that day; without an offset, UTC+08:00)")

    parser = argparse.ArgumentParser(
        prog="carbon-ledger", parents=[common],
        description="An event-sourced, verifiable registry of forestry carbon tickets (林业碳票).")
    parser.add_argument("--version", action="version", version=f"carbon-ledger {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common, reads],
                       help="create a new registry: its genesis record and operator key")
    p.add_argument("--origin", default="carbon-ledger.local/registry", help="the log's identity")
    p.add_argument("--operator", default="registry", help="the operator's participant id")
    p.add_argument("--name", default="Registry operator", help="the operator's name")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("operator-key", parents=[common, reads],
                       help="print the operator's public key, as --operator-key takes it")
    p.set_defaults(func=cmd_operator_key)

    p = sub.add_parser("keygen", parents=[common, reads], help="make a participant key pair")
    p.add_argument("participant", help="participant id; the key goes to DIR/<id>.key")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("demo", parents=[common, reads],
                       help="tell the Sanming demo story into a registry just made by init")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("balances", parents=[common, reads, as_of, remote], help="a holder's balances")
    p.add_argument("holder")
    p.set_defaults(func=cmd_balances)

    p = sub.add_parser("ticket", parents=[common, reads, as_of, remote], help="a ticket's supply and blocks")
    p.add_argument("ticket_no")
    p.set_defaults(func=cmd_ticket)

    p = sub.add_parser("pledges", parents=[common, reads, as_of, remote], help="the pledge register")
    p.add_argument("--bank", default=None, help="only pledges to this bank")
    p.set_defaults(func=cmd_pledges)

    p = sub.add_parser("compliance", parents=[common, reads, as_of, remote],
                       help="offset usage and headroom of an entity")
    p.add_argument("entity")
    p.add_argument("scheme")
    p.add_argument("period")
    p.set_defaults(func=cmd_compliance)

    p = sub.add_parser("history", parents=[common, reads, as_of, remote], help="events of a ticket or holder")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ticket")
    g.add_argument("--holder")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("rebuild", parents=[common, reads], help="replay every projection from zero")
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("checkpoint", parents=[common, reads], help="sign a checkpoint now (operator)")
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("witness", parents=[common, reads],
                       help="check the latest checkpoint's consistency and cosign it (regulator)")
    p.add_argument("--as", dest="witness", required=True, help="the witnessing regulator's id")
    p.add_argument("--state", default=None, help="the witness's state file "
                   "(default: <keys>/<id>.witness.json)")
    p.add_argument("--operator-key", default=None, help="pin the operator's public key")
    p.set_defaults(func=cmd_witness)

    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=int, default=None,
                         help="processes for signature checks (default: every core)")
    p = sub.add_parser("verify", parents=[common, reads, workers], help="the full audit of the log")
    p.add_argument("--operator-key", default=None, help="pin the operator's public key "
                   "(default: <keys>/registry.pub when present, else the genesis record's)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export", parents=[common, reads], help="write a self-contained audit file")
    p.add_argument("file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify-export", parents=[reads, workers],
                       help="audit an export file, with no database")
    p.add_argument("file")
    p.add_argument("--operator-key", required=True, help="the operator's public key (pinned)")
    p.set_defaults(func=cmd_verify_export)

    p = sub.add_parser("proof", parents=[common], help="print a proof bundle (JSON)")
    p.add_argument("kind", choices=["pledge", "retirement"])
    p.add_argument("id")
    p.set_defaults(func=cmd_proof)

    p = sub.add_parser("verify-proof", parents=[reads], help="check a proof bundle offline")
    p.add_argument("file")
    p.add_argument("--operator-key", required=True, help="the operator's public key (pinned)")
    p.set_defaults(func=cmd_verify_proof)

    p = sub.add_parser("migrate", parents=[reads, workers],
                       help="copy a registry to another store, then verify the copy")
    p.add_argument("--from", dest="source", required=True, help="source database URL")
    p.add_argument("--to", dest="target", required=True, help="target database URL (empty)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("backup", parents=[common, reads], help="back up a live registry to FILE")
    p.add_argument("file")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", parents=[common, reads], help="restore FILE into --db (new/empty)")
    p.add_argument("file")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("serve", parents=[common], help="serve the HTTP API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                   help="info (the default) logs every request; warning and above only failures")
    p.add_argument("--log-format", default="json", choices=LOG_FORMATS,
                   help="standard error's lines: one JSON object each (the default), or text")
    p.add_argument("--allow-empty", action="store_true",
                   help="serve a missing or empty registry (made on start), to be initialised "
                   "by a signed `initialise` over POST /v1/commands")
    from api.limits import add_limit_options

    add_limit_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", parents=[common, reads],
                       help="where the registry is, its size, and which processes serve it")
    p.add_argument("--idle", action="store_true",
                   help="exit 1 (registry_served) when a server holds the registry")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rotate-key", parents=[common, reads],
                       help="rotate a participant's key (signed by the old key, or the operator's)")
    p.add_argument("participant")
    p.add_argument("--as", dest="actor", default=None,
                   help="sign as this participant instead (the operator, when the key is lost)")
    p.add_argument("--command-id", default=None)
    p.set_defaults(func=cmd_rotate_key)

    p = sub.add_parser("submit", parents=[common, remote_write],
                       help="execute a command given as JSON (file or - for stdin)")
    p.add_argument("file")
    p.add_argument("--consent", action="append", default=[], metavar="PARTICIPANT",
                   help="sign the command's consent as this party too, with its key from --keys "
                   "(repeatable; without it, a local submit signs every consent the command "
                   "needs whose key --keys holds)")
    p.set_defaults(func=cmd_submit)
    cli_writes.add_verbs(sub, common)

    p = sub.add_parser("adopt-rules", parents=[common, reads],
                       help="adopt a newer rules edition from the next command on (operator)")
    p.add_argument("edition", type=int, choices=sorted(EDITIONS),
                   help="; ".join(f"{n}: {text}" for n, text in EDITIONS.items()))
    p.set_defaults(func=cmd_adopt_rules)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_collector()
    if not hasattr(args, "db"):
        args.db = None
    args.json = getattr(args, "json", False)
    try:
        return args.func(args)
    except DomainError as e:
        if args.json:
            _print_json({"error": e.to_dict()})
        err.print(f"[red]error[/] {e.code}: {e.message}")
        return EXIT_REFUSED
    except ValueError as e:  # bad database URLs and the like
        err.print(f"[red]error[/] invalid_argument: {e}")
        return EXIT_USAGE
    finally:
        while _opened:
            _opened.pop().close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
