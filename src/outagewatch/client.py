"""The operator CLI's client for a running daemon's API: ``outagewatch maintenance ...`` and
``outagewatch incident ...``. Standard library HTTP: one request per command."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from outagewatch.errors import OutagewatchError

if TYPE_CHECKING:
    import argparse

DEFAULT_URL = "http://127.0.0.1:9817"


class ApiError(OutagewatchError, RuntimeError):
    """The daemon refused the request or could not be reached; the text says why."""


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float = 10.0) -> None:
        url = url.strip()
        if "://" not in url:  # 127.0.0.1:9817, as the daemon's server.listen is written
            url = f"http://{url}"
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return json.loads(self.raw(method, path, body) or b"null")

    def raw(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        """The answer's body as it came (a report in CSV or HTML), or ApiError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the operator's own daemon URL
            f"{self._url}{path}", data=data, method=method,
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self._token}"} if self._token else {})})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                answer: bytes = response.read()
                return answer
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read())
            except (json.JSONDecodeError, UnicodeDecodeError):
                detail = {"error": exc.reason}
            field = f" ({detail['field']})" if detail.get("field") else ""
            raise ApiError(f"refused ({exc.code}): {detail.get('error')}{field}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach the daemon at {self._url}: {reason}") from None


def client_from(args: argparse.Namespace) -> Client:
    token = args.token or os.environ.get("OUTAGEWATCH_TOKEN")
    if args.token_file:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiError(f"cannot read {args.token_file}: {exc.strerror}") from None
    return Client(args.url or os.environ.get("OUTAGEWATCH_URL") or DEFAULT_URL, token)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def _quoted(ident: str) -> str:
    """An id (a window's, an incident's) as one path segment; the daemon takes any case."""
    return urllib.parse.quote(ident, safe="")


def maintenance(args: argparse.Namespace) -> str:
    client = client_from(args)
    match args.action:
        case "list":
            result = client.call("GET", "/api/v1/maintenance")
            rows = result["windows"]
        case "show":
            result = client.call("GET", f"/api/v1/maintenance/{_quoted(args.id)}")
            rows = [result]
        case "add":
            result = client.call("POST", "/api/v1/maintenance", {
                "id": args.id.lower(), "platform": args.platform, "targets": args.target,
                "start": args.start, "end": args.end,
                "kind": "emergency" if args.emergency else "planned",
                "description": args.description, "impact": args.impact})
            rows = [result]
        case "update":
            times = {k: v for k, v in (("start", args.start), ("end", args.end)) if v}
            if not times:
                raise ApiError("maintenance update: give --start, --end or both")
            result = client.call("PATCH", f"/api/v1/maintenance/{_quoted(args.id)}", times)
            rows = [result]
        case _:
            result = client.call("DELETE", f"/api/v1/maintenance/{_quoted(args.id)}")
            rows = [result]
    if args.json:
        return json.dumps(result, indent=2)
    text = table([[w["id"], w["platform"], w["kind"], w["state"], w["start"], w["end"],
                   ",".join(w["targets"])] for w in rows],
                 ["ID", "PLATFORM", "KIND", "STATE", "START", "END", "TARGETS"])
    if args.action == "show":
        text += "".join(f"\n{line}" for line in failed_mails(result["id"],
                                                               result.get("mails", [])))
    return text


MAIL_STATES = ("sent", "pending", "failed", "superseded")


def mails_by_state(mails: list[dict[str, Any]]) -> str:
    """``3 sent, 1 pending, 1 failed`` (a mail per recipient), or ``-`` for none."""
    counts: dict[str, int] = {}
    for item in mails:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    order = [*MAIL_STATES, *sorted(set(counts) - set(MAIL_STATES))]
    return ", ".join(f"{counts[state]} {state}" for state in order if state in counts) or "-"


def failed_mails(thread_id: str, mails: list[dict[str, Any]]) -> list[str]:
    """The failed mails of an incident or window, each with its id for ``mail resend``,
    its recipient and the error; nothing when none failed."""
    failed = [m for m in mails if m["status"] == "failed"]
    if not failed:
        return []
    lines = [f"failed mails ({len(failed)}): fix the cause, then 'outagewatch mail resend ID'"]
    lines += [f"  {thread_id}/{m['number']}  {m['kind']}  to {m.get('recipient') or '?'}: "
              f"{m.get('last_error') or 'no error recorded'}" for m in failed]
    return lines


def incident(args: argparse.Namespace) -> str:
    client = client_from(args)
    match args.action:
        case "list":
            result = client.call("GET", "/api/v1/incidents")
            if args.json:
                return json.dumps(result, indent=2)
            return table([_incident_row(i) for i in result["open"] + result["recent"]],
                         ["ID", "PLATFORM", "SEV", "STATE", "STARTED", "SERVICES", "MAILS"])
        case "show":
            result = client.call("GET", f"/api/v1/incidents/{_quoted(args.id)}")
            return json.dumps(result, indent=2) if args.json else timeline(result)
        case "open":
            result = client.call("POST", "/api/v1/incidents", {
                "platform": args.platform, "severity": args.severity,
                "services": args.service, "components": args.component,
                "impact": args.impact, "ticket": args.ticket, "etr": args.etr,
                "since": args.since, "until_restored": args.until_restored})
            done = f"ok: incident {result['id']} opened, OPEN mail queued"
        case "resolve":
            result = client.call("POST", f"/api/v1/incidents/{_quoted(args.id)}/resolve",
                                 {"note": args.note} if args.note else {})
            done = f"ok: incident {result['id']} resolved, RESOLVED mail queued"
        case "attach":
            result = client.call("PATCH", f"/api/v1/incidents/{_quoted(args.id)}", {
                "ticket": args.ticket, "services": args.service,
                "components": args.component})
            done = f"ok: attached to {result['id']}, UPDATE mail queued"
        case "set-severity":
            result = client.call("PATCH", f"/api/v1/incidents/{_quoted(args.id)}",
                                 {"severity": args.level, "reason": args.reason})
            done = f"ok: {result['id']} is severity {result['severity']}, UPDATE mail queued"
        case _:
            body = {"set-etr": {"etr": args.value},
                    "set-interval": {"update_interval": args.value},
                    "note": {"note": args.value}}[args.action]
            result = client.call("PATCH", f"/api/v1/incidents/{_quoted(args.id)}", body)
            done = f"ok: {result['id']} updated, mail queued"
    return json.dumps(result, indent=2) if args.json else done


def _incident_row(i: dict[str, Any]) -> list[str]:
    services = i.get("services") or i["involved"]
    return [i["id"], i["platform"], str(i["severity"]),
            "resolved" if i["resolved_at"] else "open", i["started_at"] or "-",
            _capped(",".join(services), SERVICES_WIDTH), mails_by_state(i["mails"])]


SERVICES_WIDTH = 60  # characters of the SERVICES column: one incident must not widen them all


def _capped(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _every(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"every {minutes} min" + (f" {rest} s" if rest else "") if minutes else \
        f"every {rest} s"


def timeline(i: dict[str, Any]) -> str:
    """``incident show``: the incident, then what happened to it in time order: each mail
    (with its recipients' states) and each note."""
    by_hand = i.get("origin") == "operator"
    head = [
        ("Incident", f"{i['id']} ({'resolved' if i['resolved_at'] else 'open'})"),
        ("Platform", i["platform"]),
        ("Severity", str(i["severity"]) + (" (set by hand)" if i.get("severity_set") ==
                                           i["severity"] else "")),
        ("Opened by", "the operators" if by_hand else "the probes"),
        ("Ticket", i.get("ticket") or "-"),
        ("Services", ", ".join(i.get("services") or i["involved"]) or "-"),
        ("Impact", i.get("impact") or "-"),
        ("Started", i["started_at"] or "-"),
        ("Opened", i["opened_at"] or "-"),
        ("ETR", i["etr"] or "unknown"),
        ("Restored", i["restored_at"] or "-"),
        ("Resolved", i["resolved_at"] or "-"),
        ("Updates", _every(i["update_interval_s"])),
    ]
    width = max(len(k) for k, _ in head) + 1
    lines = [f"{key + ':':<{width}} {value}" for key, value in head]
    events: list[tuple[str, str, str]] = [(n["at"], "note", n["text"]) for n in i["notes"]]
    mails: dict[int, list[dict[str, Any]]] = {}
    for mail in i["mails"]:
        mails.setdefault(mail["number"], []).append(mail)
    for number, lanes in sorted(mails.items()):
        first = lanes[0]
        said = mails_by_state(lanes)
        errors = sorted({f"{lane.get('recipient') or lane.get('lane') or '?'}: "
                         f"{lane['last_error']}" for lane in lanes
                         if lane["status"] != "sent" and lane.get("last_error")})
        detail = f"{first['subject']} [{said}]" + (f" ({'; '.join(errors)})" if errors else "")
        events.append((first["created"], f"mail {number} {first['kind'].upper()}", detail))
    lines.append("")
    lines.append(table([list(e) for e in sorted(events)], ["TIME", "WHAT", "DETAIL"])
                 if events else "no mails or notes yet")
    failed = failed_mails(i["id"], i["mails"])
    if failed:
        lines += ["", *failed]
    return "\n".join(lines)


def cluster(args: argparse.Namespace) -> str:
    """``outagewatch cluster status``: the nodes, who leads, the epoch (from any node)."""
    result = client_from(args).call("GET", "/api/v1/cluster")
    if args.json:
        return json.dumps(result, indent=2)
    leader = result["leader"]
    rows = [[n["node"], n["location"], n["address"], n["version"],
             f"{n['heartbeat_age_s']:.1f}s ago", "live" if n["live"] else "STALE",
             "leader" if n["node"] == leader["node"] and leader["live"] else ""]
            for n in result["nodes"]]
    head = (f"leader: {leader['node']} (epoch {leader['epoch']}, heard from "
            f"{leader['heartbeat_age_s']:.1f}s ago)" if leader["live"]
            else f"leader: none live (epoch {leader['epoch']})")
    return head + "\n" + table(rows, ["NODE", "LOCATION", "ADDRESS", "VERSION", "HEARTBEAT",
                                      "STATE", "ROLE"])


def mail(args: argparse.Namespace) -> str:
    """``outagewatch mail resend ID [--to ADDRESS]``: a failed mail back to pending."""
    body = {"id": args.id, **({"recipient": args.to} if args.to else {})}
    result = client_from(args).call("POST", "/api/v1/mails/resend", body)
    if args.json:
        return json.dumps(result, indent=2)
    return (f"ok: mail {result['id']} to {', '.join(result['recipients'])} is pending "
            "again; the daemon sends it now (same Message-ID)")


def report(args: argparse.Namespace) -> str:
    """``outagewatch report``: the daemon's availability report, as it rendered it."""
    query: list[tuple[str, str]] = [("format", "json" if args.json else args.format)]
    if args.period:
        query.append(("period", args.period))
    if args.start or args.end:
        query += [("from", args.start or ""), ("to", args.end or "")]
    query += [("platform", p) for p in args.platform]
    body = client_from(args).raw("GET", f"/api/v1/report?{urllib.parse.urlencode(query)}")
    return body.decode().rstrip("\n")
