"""The ``outagewatch`` command: its parser, and the commands that need no running daemon.

Exit 0 ok, 1 a probe was BAD, 2 bad input (one line, no traceback); each command's ``--help``
says its own (``EXITS``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from outagewatch import __version__, capacity, client
from outagewatch.clock import SystemClock
from outagewatch.config import Settings, config_warnings, load_settings
from outagewatch.errors import ConfigError, OutagewatchError
from outagewatch.logs import LEVELS, configure_logging
from outagewatch.model import Phase, ProbeType, Result, Sample, sample_json
from outagewatch.probes import ProbeContext, new_http_session, phases_of, run_probe

if TYPE_CHECKING:
    from collections.abc import Coroutine, Sequence

    from outagewatch.config import Target

log = structlog.get_logger("outagewatch.cli")

EXIT_OK, EXIT_BAD, EXIT_USAGE = 0, 1, 2


class UsageError(OutagewatchError, ValueError):
    """A mistake on the command line."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


DESCRIPTION = """\
outagewatch: synthetic monitoring of mail platforms. It probes HTTP, SMTP, IMAP and POP3
services, declares outages by the agreed rules and mails the incident and maintenance lists.
Each command has its own --help, e.g. outagewatch probe --help."""

EXITS = {
    "run": "exit status: 0 stopped by SIGTERM or SIGINT; 2 bad configuration or cannot start "
           "(one line, e.g. the listen port is in use)",
    "check-config": "exit status: 0 the configuration is valid; 2 it is not (one line per "
                    "problem) or cannot be read",
    "config-schema": "exit status: 0",
    "demo": "exit status: 0 the daemon saw what it should; 1 it did not",
    "notify": "exit status: 0 every recipient accepted; 1 a recipient refused or no relay "
              "took the mail; 2 bad input (configuration, unknown platform, empty list)",
    "probe": "exit status: 0 every probe good; 1 a probe BAD (failed, or slower than its "
             "threshold); 2 bad input (configuration, unknown target)",
}
OPERATOR_EXITS = ("exit status: 0 done; 2 bad input, or the daemon refused the request or "
                  "could not be reached (one line saying which)")
TIME = "ISO 8601 with a zone, e.g. 2026-12-16T03:00:00+01:00"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="outagewatch", description=DESCRIPTION,
                     epilog=_wrap("exit status: 0 ok; 1 a probe BAD (probe); 2 bad input; "
                                  "each command's --help says its own"))
    parser.add_argument("-V", "--version", action="version", version=f"outagewatch {__version__}",
                        help=f"print the version ('outagewatch {__version__}') and exit")
    parser.add_argument("--log-level", choices=LEVELS, default="info",
                        help=f"least severe log line shown: {', '.join(LEVELS)} (default: "
                             "info), e.g. --log-level debug")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="COMMAND")

    def with_config(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        config_option(sub)
        return sub

    with_config("run", "run the daemon until SIGTERM or SIGINT; SIGHUP reloads the config")
    with_config("check-config", "validate the configuration: 'ok' or one line per problem")
    commands.add_parser("config-schema", help="print the configuration reference (Markdown)")
    commands.add_parser(
        "demo", help="run the daemon against simulated services and print what it sees",
        description="Start simulated HTTP, SMTP, IMAP and POP3 services on loopback, make "
        "one slow and one dead, heal them, and print the daemon's view. About 25 seconds.")
    probe = with_config("probe", "probe the selected targets once, now, and print each result "
                                 "as its probe finishes")
    probe.add_argument("-t", "--target", action="append", default=[], metavar="NAME",
                       help="probe only this target, a name from the configuration's targets, "
                            "e.g. -t imap-eu (repeatable; default: all)")
    probe.add_argument("--json", action="store_true",
                       help="one JSON object per result instead of the table, a line each, "
                            'times in ISO 8601 UTC, e.g. {"target": "imap-eu", '
                            '"result": "ok", ...}')
    _operator_commands(commands)
    _delivery_commands(commands)
    _report_command(commands)
    _document(parser)
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
    config_option(test)
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


def _report_command(commands: Any) -> None:
    report = commands.add_parser(
        "report", help="the availability report of a month, quarter, year or range",
        description="The availability report from a running daemon's history: per platform "
        "and service the availability (1 - outage / (period - maintenance - blind)), outage, "
        "planned outage, maintenance and blind minutes, incidents by severity, the longest "
        "one and the mean time to restore, and the incident list. Periods are calendar "
        "periods in each platform's time zone.")
    report.add_argument("--period", help="2026-11 (a month), 2026-Q4 (a quarter) or 2026 "
                        "(a year)")
    report.add_argument("--from", dest="start", metavar="DATE",
                        help="first day of a custom range, e.g. 2026-11-03 (with --to)")
    report.add_argument("--to", dest="end", metavar="DATE",
                        help="the day after the range, e.g. 2026-11-10 (exclusive)")
    report.add_argument("--platform", action="append", default=[], metavar="NAME",
                        help="only this platform, e.g. eu (repeatable; default: all)")
    report.add_argument("--format", choices=("text", "csv", "json", "html"), default="text",
                        help="text (default), csv (a row per platform and service), json, or "
                        "html (prints to PDF from a browser)")
    _client_options(report)


def _client_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--url", metavar="URL",
                     help="the daemon's API, a URL or host:port (http:// when no scheme), "
                          "e.g. http://127.0.0.1:9817 (default: $OUTAGEWATCH_URL, else "
                          "http://127.0.0.1:9817)")
    sub.add_argument("--token", metavar="TOKEN",
                     help="operator token, the value of the daemon's server.token_env "
                          "variable (default: $OUTAGEWATCH_TOKEN); other users can read a "
                          "command line: prefer --token-file or the variable")
    sub.add_argument("--token-file", type=Path, metavar="FILE",
                     help="file holding the operator token on its first line, e.g. "
                          "/etc/outagewatch/token")
    sub.add_argument("--json", action="store_true",
                     help="print the API's JSON answer instead of a table (times in ISO "
                          "8601 UTC)")


def config_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("-c", "--config", type=Path, metavar="FILE",
                     help="YAML configuration file, e.g. /etc/outagewatch/config.yaml "
                          "(default: $OUTAGEWATCH_CONFIG)")


def _document(parser: argparse.ArgumentParser, command: str | None = None) -> None:
    """Fill in what every command's --help shows: its description (the help line in the
    parent's list when it has none), its exit codes, and the help of an ``id`` argument."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        helps = {a.dest: a.help for a in action._choices_actions}  # noqa: SLF001
        for name, sub in action.choices.items():
            top = command or name
            if sub.description is None:
                sub.description = helps.get(name)
            if sub.description and "\n" not in sub.description:
                sub.description = textwrap.fill(sub.description, width=79)
            if sub.epilog is None:
                sub.epilog = _wrap(EXITS.get(top, OPERATOR_EXITS))
            for argument in sub._actions:  # noqa: SLF001
                if argument.dest == "id" and not argument.help and not argument.option_strings:
                    argument.help = _ID_HELP.get(top, "its id")
            _document(sub, top)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=79, subsequent_indent="  ")


_ID_HELP = {
    "maintenance": "the window's id, as 'maintenance list' shows it (any case), e.g. db-upgrade",
    "incident": "the incident's id, as 'incident list' shows it (any case), e.g. "
                "EU-20261216-0300",
}


def _operator_commands(commands: Any) -> None:
    """``maintenance`` and ``incident``: clients of a running daemon's API."""

    client_options = _client_options

    m = commands.add_parser("maintenance", help="list, add, move or cancel maintenance windows")
    ms = m.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    client_options(ms.add_parser("list", help="every window, past and future"))
    show = ms.add_parser("show", help="one window")
    show.add_argument("id")
    client_options(show)
    add = ms.add_parser("add", help="register a window and mail its ANNOUNCEMENT")
    add.add_argument("--id", required=True,
                     help="a new window id: lower-case letters, digits, '_', '.', '-', e.g. "
                          "db-upgrade-2026-12")
    add.add_argument("--platform", required=True,
                     help="a platform of the configuration, e.g. eu")
    add.add_argument("--start", required=True, help=f"when the window starts, {TIME}")
    add.add_argument("--end", required=True,
                     help="when it ends, after --start, ISO 8601 with a zone, e.g. "
                          "2026-12-16T05:00:00+01:00")
    add.add_argument("--target", action="append", default=[], metavar="NAME",
                     help="a target of the platform it covers, e.g. --target imap-eu "
                          "(repeatable; default: all the platform's targets)")
    add.add_argument("--emergency", action="store_true",
                     help="an emergency window, announced without notice (default: planned, "
                          "maintenance.notice_days business days ahead)")
    add.add_argument("--description", default="",
                     help="what is done, for the mails, e.g. 'Database upgrade' (default: none)")
    add.add_argument("--impact", default="",
                     help="what users notice, for the mails, e.g. 'Web-Mail unavailable for "
                          "10 minutes' (default: none)")
    client_options(add)
    update = ms.add_parser("update", help="move a window's start and/or end (mails UPDATED)")
    update.add_argument("id")
    update.add_argument("--start", help=f"the new start, {TIME} (default: unchanged)")
    update.add_argument("--end", help="the new end, ISO 8601 with a zone, e.g. "
                                      "2026-12-16T05:00:00+01:00 (default: unchanged)")
    client_options(update)
    cancel = ms.add_parser("cancel", help="withdraw a window (mails CANCELLED)")
    cancel.add_argument("id")
    client_options(cancel)

    c = commands.add_parser("cluster", help="a cluster's nodes, leader and epoch")
    csub = c.add_subparsers(dest="action", required=True, parser_class=_Parser)
    client_options(csub.add_parser("status", help="nodes, locations, heartbeats, leader"))

    i = commands.add_parser(
        "incident", help="list and show incidents; open, change and resolve them by hand")
    isub = i.add_subparsers(dest="action", required=True, parser_class=_Parser)
    client_options(isub.add_parser("list", help="open and recent incidents"))
    ishow = isub.add_parser("show", help="one incident with its timeline of mails and notes")
    ishow.add_argument("id")
    client_options(ishow)
    _incident_by_hand(isub, client_options)
    etr = ("expected time to restoration: ISO 8601 with a zone "
           "(2026-12-16T03:00:00+01:00) or relative (+2h, 90m)")
    for action, what in (("set-etr", etr),
                         ("set-interval", "update interval, e.g. 30m"),
                         ("note", "a note for the next mail (sent at once)")):
        sub = isub.add_parser(action, help=what)
        sub.add_argument("id")
        sub.add_argument("value", help=what)
        client_options(sub)


def _incident_by_hand(isub: Any, client_options: Any) -> None:
    """``incident open``, ``resolve`` and ``set-severity``: what a customer's ticket or a
    threat no probe sees needs (the same mails as a declared outage)."""
    opening = isub.add_parser(
        "open", help="open an incident by hand (a customer-reported outage): OPEN mail, "
        "hourly UPDATEs, RESOLVED when you resolve it",
        description="Open an incident by hand, e.g. for an outage a customer reported "
        "through the ticket process: the same OPEN mail to the platform's incident list, "
        "the same UPDATEs, and RESOLVED when you run 'incident resolve'. Probe-declared "
        "outages on the platform join it.")
    opening.add_argument("--platform", required=True, help="the platform, e.g. eu")
    opening.add_argument("--severity", required=True, type=int, choices=(1, 2, 3),
                         help="1 complete outage or security threat, 2 a business-critical "
                         "component unusable, 3 partial loss of non-critical functionality")
    opening.add_argument("--service", action="append", default=[], metavar="NAME",
                         help="a monitored service (target name) affected, e.g. imap-eu "
                         "(repeatable)")
    opening.add_argument("--component", action="append", default=[], metavar="TEXT",
                         help='anything else affected, e.g. "Calendar sync" (repeatable)')
    opening.add_argument("--impact", required=True,
                         help='what users notice, e.g. "Calendar invitations are not '
                         'delivered"')
    opening.add_argument("--ticket", help="the customer's ticket, quoted in every mail, "
                         "e.g. OX-12345")
    opening.add_argument("--etr", help="expected time to restoration: ISO 8601 with a zone "
                         "or relative, e.g. +2h")
    opening.add_argument("--since", help="when it began (default now): ISO 8601 with a zone "
                         "or relative to now, e.g. --since=-30m")
    opening.add_argument("--until-restored", action="store_true",
                         help="resolve it when the probes see the named services recover "
                         "(only for --service; default: only 'incident resolve' does)")
    client_options(opening)
    resolving = isub.add_parser("resolve", help="resolve an incident by hand: RESOLVED mail")
    resolving.add_argument("id")
    resolving.add_argument("--note", help="what was done, quoted in the mail")
    client_options(resolving)
    severity = isub.add_parser(
        "set-severity", help="set the severity by hand (UPDATE mail with the reason); "
        "probe changes never lower it")
    severity.add_argument("id")
    severity.add_argument("level", type=int, choices=(1, 2, 3), help="1, 2 or 3")
    severity.add_argument("--reason", required=True,
                          help='why, quoted in the mail, e.g. "security: possible data '
                          'exposure"')
    client_options(severity)
    attach = isub.add_parser(
        "attach", help="attach a customer's ticket and what they reported to an open "
        "incident (one UPDATE mail)")
    attach.add_argument("id")
    attach.add_argument("--ticket", help="the customer's ticket, quoted in every mail from "
                        "now on, e.g. OX-12345")
    attach.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="a monitored service reported affected, e.g. imap-eu "
                        "(repeatable)")
    attach.add_argument("--component", action="append", default=[], metavar="TEXT",
                        help='anything else reported affected, e.g. "Calendar sync" '
                        "(repeatable)")
    client_options(attach)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"check-config": _check_config, "probe": _probe, "run": _run, "demo": _demo,
                "maintenance": _operator, "incident": _operator, "cluster": _operator,
                "config-schema": _config_schema, "notify": _notify, "mail": _operator,
                "report": _operator}
    try:
        return commands[args.command](args)
    except OutagewatchError as exc:  # the user's mistake or the environment's: one line each
        problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
        for line in problems:
            print(f"outagewatch: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `outagewatch incident list | head -3`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _operator(args: argparse.Namespace) -> int:
    commands = {"maintenance": client.maintenance, "incident": client.incident,
                "cluster": client.cluster, "mail": client.mail, "report": client.report}
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
    """One line per problem (exit 2), then ``warning: ...`` lines; ``ok`` if nothing stops
    ``run`` (warnings alone exit 0)."""
    from outagewatch import preflight  # noqa: PLC0415 - only this command looks further

    try:
        settings = load_settings(_config_path(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(line)
        return EXIT_USAGE
    problems = preflight.problems(settings, now=datetime.now(UTC))
    for line in problems:
        print(line)
    for line in config_warnings(settings):
        print(f"warning: {line}")
    if problems:
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
    # only the selected targets' secrets are needed (and must be there)
    settings = load_settings(_config_path(args), only_targets=args.target or None)
    targets = _select(settings, args.target)
    columns = _Columns(targets)

    async def one(index: int, target: Target, ctx: ProbeContext) -> bool:
        """Probe one target and print its result at once: True when it is BAD."""
        sample = await _staggered(index, target, ctx, settings)
        threshold = settings.rule_for(target).threshold
        if args.json:
            print(json.dumps(_as_json(target, sample, threshold)), flush=True)
        else:
            print(columns.line(_row(target, sample, threshold)), flush=True)
        return sample.is_bad(threshold)

    async def main() -> int:
        if not args.json:
            print(columns.line(list(PROBE_HEADER)), flush=True)
        async with new_http_session() as session:
            ctx = ProbeContext(clock=SystemClock(), session=session)
            bad = await asyncio.gather(*(one(i, t, ctx) for i, t in enumerate(targets)))
        return EXIT_BAD if any(bad) else EXIT_OK

    return _run_loop(settings, main())


PROBE_HEADER = ("TARGET", "TYPE", "RESULT", "TIME", "PHASES", "DETAIL")


class _Columns:
    """Fixed column widths for ``probe``'s table, known before the first result, so that rows
    print as their probes finish and still line up. PHASES is sized for sub-second phases; a
    longer one only pushes that row's DETAIL to the right."""

    def __init__(self, targets: Sequence[Target]) -> None:
        verdicts = [r.value for r in Result] + ["SLOW"]
        self.widths = [
            max([len(PROBE_HEADER[0])] + [len(t.name) for t in targets]),
            max(len(PROBE_HEADER[1]), *(len(t.value) for t in ProbeType)),
            max(len(PROBE_HEADER[2]), *(len(v) for v in verdicts)),
            len("9999ms"),
            max([len(PROBE_HEADER[4])] + [_phases_width(t) for t in targets]),
        ]

    def line(self, row: list[str]) -> str:
        cells = [c.ljust(w) for c, w in zip(row, self.widths, strict=False)]
        return "  ".join([*cells, *row[len(self.widths):]]).rstrip()


def _phases_width(target: Target) -> int:
    """The width of the target's PHASES cell when each phase took 100 to 999 ms."""
    tls = getattr(target, "tls", None)
    skip = {"none": {Phase.TLS, Phase.STARTTLS}, "starttls": {Phase.TLS},
            "implicit": {Phase.STARTTLS}}.get(tls or "", set())
    names = [p.value for p in phases_of(ProbeType(target.type)) if p not in skip]
    return sum(len(f"{name}=999ms") for name in names) + len(names) - 1


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
