"""The ``outagewatch`` command.

Exit 0 ok, 1 a probe was BAD, 2 bad input (one line, no traceback)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import structlog

from outagewatch import __version__, capacity, client
from outagewatch.clock import SystemClock
from outagewatch.config import Settings, load_settings
from outagewatch.errors import ConfigError, OutagewatchError
from outagewatch.logs import LEVELS, configure_logging
from outagewatch.model import ProbeType, Sample, sample_json
from outagewatch.probes import ProbeContext, new_http_session, phases_of, run_probe

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence
    from typing import Any

    from outagewatch.config import Target

log = structlog.get_logger("outagewatch.cli")

EXIT_OK, EXIT_BAD, EXIT_USAGE = 0, 1, 2


class UsageError(OutagewatchError, ValueError):
    """A mistake on the command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="outagewatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"outagewatch {__version__}")
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("-c", "--config", type=Path,
                         help="YAML configuration file (default: $OUTAGEWATCH_CONFIG)")
        return sub

    with_config("run", "run the daemon until SIGTERM or SIGINT; SIGHUP reloads the config")
    with_config("check-config", "validate the configuration: 'ok' or one line per problem")
    commands.add_parser("config-schema", help="print the configuration reference (Markdown)")
    commands.add_parser(
        "demo", help="run the daemon against simulated services and print what it sees",
        description="Start simulated HTTP, SMTP, IMAP and POP3 services on loopback, make "
        "one slow and one dead, heal them, and print the daemon's view. About 25 seconds.")
    probe = with_config("probe", "probe the selected targets once, now, and print the results")
    probe.add_argument("-t", "--target", action="append", default=[], metavar="NAME",
                       help="probe only this target (repeatable; default: all)")
    probe.add_argument("--json", action="store_true", help="one JSON object per line")
    _operator_commands(commands)
    _delivery_commands(commands)
    return parser


def _delivery_commands(commands: Any) -> None:
    """``notify test`` (no daemon needed) and ``mail resend`` (a client of the daemon)."""
    n = commands.add_parser("notify", help="test mail delivery through the relays")
    nsub = n.add_subparsers(dest="action", required=True, parser_class=_Parser)
    test = nsub.add_parser(
        "test", help="send a marked test mail to a platform's list and print the relays' "
        "answers (exit 0 accepted, 1 not, 2 bad input)",
        description="Send one mail, subject '[TEST] outagewatch ...', through the "
        "configured relays (in order, as real mails go) to a platform's list, and print "
        "every answer of every relay tried and, per recipient, accepted or refused. "
        "Needs no running daemon. Exit 0 when every recipient was accepted, 1 when not, "
        "2 for bad input.")
    test.add_argument("-c", "--config", type=Path,
                      help="YAML configuration file (default: $OUTAGEWATCH_CONFIG)")
    test.add_argument("--platform", required=True,
                      help="the platform whose list gets the mail, e.g. eu")
    test.add_argument("--list", dest="audience", choices=("incident", "info"),
                      default="incident", help="incident (default) or info recipients")
    m = commands.add_parser("mail", help="resend a mail that failed for good")
    msub = m.add_subparsers(dest="action", required=True, parser_class=_Parser)
    resend = msub.add_parser(
        "resend", help="send a failed mail again, same Message-ID",
        description="Set the failed deliveries of one mail back to pending, so the daemon "
        "sends it again (same Message-ID) once you fixed the cause. ID is the incident's "
        "or window's id and the mail's number, e.g. EU-20261129-1423/2 (any case); "
        "'incident show' and 'maintenance show' list failed mails with their id.")
    resend.add_argument("id", help="THREAD/NUMBER, e.g. EU-20261129-1423/2")
    resend.add_argument("--to", metavar="ADDRESS",
                        help="only this recipient's delivery (default: every failed one)")
    _client_options(resend)


def _client_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--url", help="the daemon (default $OUTAGEWATCH_URL or "
                     "http://127.0.0.1:9817)")
    sub.add_argument("--token", help="operator token (default $OUTAGEWATCH_TOKEN)")
    sub.add_argument("--token-file", type=Path, help="file holding the token")
    sub.add_argument("--json", action="store_true", help="print the API's JSON")


def _operator_commands(commands: Any) -> None:
    """``maintenance`` and ``incident``: clients of a running daemon's API."""

    client_options = _client_options

    m = commands.add_parser("maintenance", help="list, add, move or cancel maintenance")
    ms = m.add_subparsers(dest="action", required=True, parser_class=_Parser)
    client_options(ms.add_parser("list", help="every window"))
    show = ms.add_parser("show", help="one window")
    show.add_argument("id")
    client_options(show)
    add = ms.add_parser("add", help="register (and announce) a window")
    for name in ("--id", "--platform", "--start", "--end"):
        add.add_argument(name, required=True)
    add.add_argument("--target", action="append", default=[], help="repeatable; default all")
    add.add_argument("--emergency", action="store_true", help="no notice needed")
    add.add_argument("--description", default="")
    add.add_argument("--impact", default="")
    client_options(add)
    update = ms.add_parser("update", help="move a window (mails UPDATED)")
    update.add_argument("id")
    update.add_argument("--start", required=True)
    update.add_argument("--end", required=True)
    client_options(update)
    cancel = ms.add_parser("cancel", help="withdraw a window (mails CANCELLED)")
    cancel.add_argument("id")
    client_options(cancel)

    c = commands.add_parser("cluster", help="a cluster's nodes, leader and epoch")
    csub = c.add_subparsers(dest="action", required=True, parser_class=_Parser)
    client_options(csub.add_parser("status", help="nodes, locations, heartbeats, leader"))

    i = commands.add_parser("incident", help="list incidents, set ETR or interval, add notes")
    isub = i.add_subparsers(dest="action", required=True, parser_class=_Parser)
    client_options(isub.add_parser("list", help="open and recent incidents"))
    ishow = isub.add_parser("show", help="one incident with its mails")
    ishow.add_argument("id")
    client_options(ishow)
    for action, what in (("set-etr", "expected time to restoration, ISO 8601 with a zone"),
                         ("set-interval", "update interval, e.g. 30m"),
                         ("note", "a note for the next mail (sent at once)")):
        sub = isub.add_parser(action, help=what)
        sub.add_argument("id")
        sub.add_argument("value", help=what)
        client_options(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"check-config": _check_config, "probe": _probe, "run": _run, "demo": _demo,
                "maintenance": _operator, "incident": _operator, "cluster": _operator,
                "config-schema": _config_schema, "notify": _notify, "mail": _operator}
    try:
        return commands[args.command](args)
    except OutagewatchError as exc:  # the user's mistake or the environment's: one line each
        problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
        for line in problems:
            print(f"outagewatch: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _operator(args: argparse.Namespace) -> int:
    commands = {"maintenance": client.maintenance, "incident": client.incident,
                "cluster": client.cluster, "mail": client.mail}
    print(commands[args.command](args))
    return EXIT_OK


def _notify(args: argparse.Namespace) -> int:
    """``notify test``: one marked mail through the relays, every answer printed."""
    from outagewatch.notify.testmail import send_test_mail  # noqa: PLC0415 - this command only

    configure_logging("error", stream=sys.stderr)
    path = _config_path(args)
    settings = load_settings(path)
    report = asyncio.run(send_test_mail(settings, args.platform, args.audience,
                                        source=str(path)))
    print(report.text)
    return EXIT_OK if report.accepted else EXIT_BAD


def _config_schema(args: argparse.Namespace) -> int:
    from outagewatch.reference import config_reference  # noqa: PLC0415 - only this command

    del args
    print(config_reference(), end="")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from outagewatch.demo import run_demo  # noqa: PLC0415 - only this command needs it

    del args
    configure_logging("error", stream=sys.stderr)
    return run_demo()


def _config_path(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get("OUTAGEWATCH_CONFIG")
    if not path:
        raise UsageError("no configuration: pass -c FILE or set OUTAGEWATCH_CONFIG")
    return Path(path)


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_settings(_config_path(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(line)
        return EXIT_USAGE
    print("ok")
    return EXIT_OK


def _run_loop(settings: Settings, coro: Coroutine[Any, Any, int]) -> int:
    if settings.engine.uvloop:
        try:
            import uvloop  # noqa: PLC0415 - optional dependency
        except ImportError:
            coro.close()
            raise UsageError("engine.uvloop is true but uvloop is not installed "
                             "(pip install 'outagewatch[uvloop]')") from None
        return uvloop.run(coro)
    return asyncio.run(coro)


def _run(args: argparse.Namespace) -> int:
    from outagewatch.app import Daemon  # noqa: PLC0415 - keep check-config start-up light

    configure_logging(args.log_level)
    path = _config_path(args)
    settings = load_settings(path)
    before, after = capacity.raise_open_files()  # a hung probe run holds descriptors
    if after != before:
        log.info("open_files_raised", before=before, after=after)

    async def main() -> int:
        if settings.state.url is not None:
            from outagewatch.cluster.node import ClusterDaemon  # noqa: PLC0415

            await ClusterDaemon(settings, config_path=path).run()
        else:
            await Daemon(settings, config_path=path).run()
        return EXIT_OK

    return _run_loop(settings, main())


def _probe(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, stream=sys.stderr)
    settings = load_settings(_config_path(args))
    targets = _select(settings, args.target)

    async def main() -> int:
        async with new_http_session() as session:
            ctx = ProbeContext(clock=SystemClock(), session=session)
            samples = await asyncio.gather(*(
                _staggered(i, t, ctx, settings) for i, t in enumerate(targets)
            ))
        bad = False
        rows = []
        for target, sample in zip(targets, samples, strict=True):
            threshold = settings.rule_for(target).threshold
            bad |= sample.is_bad(threshold)
            if args.json:
                print(json.dumps(_as_json(target, sample, threshold)), flush=True)
            else:
                rows.append(_row(target, sample, threshold))
        if rows:
            print(client.table(rows, ["TARGET", "TYPE", "RESULT", "TIME", "PHASES", "DETAIL"]))
        return EXIT_BAD if bad else EXIT_OK

    return _run_loop(settings, main())


STAGGER = 0.003  # seconds between starts: a burst would be measured as the servers' slowness


async def _staggered(index: int, target: Target, ctx: ProbeContext, settings: Settings) -> Sample:
    await asyncio.sleep(index * STAGGER)
    return await run_probe(target, ctx, timeout=settings.rule_for(target).timeout)


def _select(settings: Settings, names: list[str]) -> list[Target]:
    if not names:
        return list(settings.targets)
    known = {t.name: t for t in settings.targets}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown target {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in dict.fromkeys(names)]


def _as_json(target: Target, sample: Sample, threshold: float) -> dict[str, object]:
    return {"target": target.name, "type": target.type, "platform": target.platform,
            "bad": sample.is_bad(threshold), **sample_json(sample)}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def _row(target: Target, sample: Sample, threshold: float) -> list[str]:
    verdict = sample.result.value if not sample.ok else (
        "SLOW" if sample.is_bad(threshold) else "ok")
    phases = " ".join(
        f"{p.value}={_ms(sample.phases[p])}" for p in phases_of(ProbeType(target.type))
        if p in sample.phases
    )
    detail = f"{sample.phase.value}: {sample.detail}" if sample.phase else sample.detail
    return [target.name, target.type, verdict, _ms(sample.duration), phases, detail]


if __name__ == "__main__":
    sys.exit(main())
