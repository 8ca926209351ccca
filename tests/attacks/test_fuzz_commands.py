"""
Hypothesis-generated SMTP sessions (valid commands, malformed paths,
garbage bytes, NULs, non-UTF-8, over-long lines, hostile message bodies)
played over a real socket against a listener, each reply checked against
a strict reference model of the session: which replies are allowed for
that line in that state.

The gateway must never raise (nothing logged as an error), never answer
2xx to a malformed MAIL or RCPT or to a recipient that would be relaying,
never take a message the model refuses, and store exactly the messages it
said 250 for, byte for byte.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from hypothesis import given, note, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.attacks.reference import (
    PRECEDENCE,
    body_bytes,
    path_noise,
    paths,
    ref_argument,
    ref_data,
    ref_relays,
    valid_mailboxes,
)
from tests.attacks.support import FUZZ, FUZZ_TIMEOUT, hang_up
from tests.support import Gateway, Raw, in_thread

RAT = ("example.com", ".sub.example.net", "only@example.org")
KNOWN = {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY"}
KNOWN |= {"STARTTLS", "AUTH"}


@define
class Data:
    """
    A DATA command and the body (without terminator) sent after its 354.
    """

    body: bytes


Step = bytes | Data


@define
class Model:
    """
    What the session must be doing, and what it has promised.

    @ivar accepted: (MID, sender, recipients, content) of each message
        the gateway said 250 for.
    """

    limit_messages: int
    limit_recipients: int
    helo: bool = False
    sender: str | None = None
    recipients: list[str] = field(factory=list)
    bad: int = 0
    messages: int = 0
    closed: bool = False
    accepted: list[tuple[int, str, tuple[str, ...], bytes]] = field(factory=list)

    def reset(self) -> None:
        self.sender = None
        self.recipients = []


class Refused(AssertionError):
    """
    The gateway gave a reply the model does not allow.
    """


def expect(condition: bool, line: object, reply: bytes, why: str) -> None:
    if not condition:
        raise Refused(f"{why}: {line!r} -> {reply!r}")


def check_line(model: Model, line: bytes, reply: bytes) -> None:
    """
    Judge the gateway's C{reply} to one command C{line} and move the model
    on.
    """
    code = reply[:3]

    def bad(expected_text: bytes) -> None:
        model.bad += 1
        if model.bad >= 5:
            expect(
                reply == b"421 Exceeded bad SMTP command limit, disconnecting.\r\n",
                line,
                reply,
                "fifth bad command",
            )
            model.closed = True
            return
        expect(reply == expected_text, line, reply, "bad command")

    limit = 12288 if line[:5].upper() == b"AUTH " else 512
    if len(line) + 2 > limit:
        return bad(b"500 5.5.2 Line too long\r\n")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return bad(b"500 5.5.2 Syntax error: non-ASCII command\r\n")
    if "\r" in text or "\n" in text or "\x00" in text:
        return bad(b"500 5.5.2 Syntax error: bare CR, LF or NUL in command\r\n")
    verb, _, argument = text.strip(" ").partition(" ")
    verb, argument = verb.upper(), argument.strip(" ")
    if not verb.isalpha() or verb not in KNOWN:
        return bad(b"500 5.5.1 command not recognized\r\n")
    if verb in ("EHLO", "HELO"):
        if not argument:
            expect(code == b"501", line, reply, "HELO without a name")
            return
        expect(code == b"250", line, reply, "HELO")
        model.helo = True
        model.reset()
    elif verb == "NOOP":
        expect(reply == b"250 2.0.0 Ok\r\n", line, reply, "NOOP")
    elif verb == "HELP":
        expect(code == b"214", line, reply, "HELP")
    elif verb == "VRFY":
        expect(code == (b"252" if argument else b"501"), line, reply, "VRFY")
    elif verb == "RSET":
        expect(code == (b"501" if argument else b"250"), line, reply, "RSET")
        if not argument:
            model.reset()
    elif verb == "QUIT":
        expect(reply == b"221 2.0.0 Bye\r\n", line, reply, "QUIT")
        model.closed = True
    elif verb in ("STARTTLS", "AUTH"):
        # Neither TLS nor AUTH is configured on this listener.
        expected = b"501" if verb == "STARTTLS" and argument else b"502"
        expect(code == expected, line, reply, verb)
    elif verb == "MAIL":
        check_mail(model, line, argument, reply)
    elif verb == "RCPT":
        check_rcpt(model, line, argument, reply)
    elif verb == "DATA":
        if argument:
            expect(code == b"501", line, reply, "DATA with an argument")
        elif model.sender is None:
            expect(code == b"503", line, reply, "DATA without MAIL")
        elif not model.recipients:
            expect(code == b"554", line, reply, "DATA without recipients")
        else:
            expect(code == b"354", line, reply, "DATA")


def check_mail(model: Model, line: bytes, argument: str, reply: bytes) -> None:
    code = reply[:3]
    if not model.helo or model.sender is not None:
        expect(code == b"503", line, reply, "MAIL out of sequence")
        return
    if model.messages >= model.limit_messages:
        expect(code == b"421", line, reply, "MAIL over the session's messages")
        model.closed = True
        return
    parsed = ref_argument(argument, "FROM")
    if parsed is None:
        expect(code[:1] == b"5", line, reply, "malformed MAIL must get 5xx")
        return
    if code == b"250":
        sender = parsed[0]
        model.sender = sender
        return
    # Well-formed but refused: only for parameters the gateway does not
    # take (5xx), never a transient or positive surprise.
    expect(code[:1] == b"5", line, reply, "well-formed MAIL")


def check_rcpt(model: Model, line: bytes, argument: str, reply: bytes) -> None:
    code = reply[:3]
    if model.sender is None:
        expect(code == b"503", line, reply, "RCPT without MAIL")
        return
    parsed = ref_argument(argument, "TO")
    if parsed is None:
        expect(code[:1] == b"5", line, reply, "malformed RCPT must get 5xx")
        return
    mailbox, route = parsed
    if mailbox == "postmaster":
        mailbox = "postmaster@mx.test.example"
    relaying = ref_relays(mailbox, route, RAT)
    if relaying:
        expect(code[:1] == b"5", line, reply, "relaying must be refused")
        return
    if code == b"250":
        expect(len(model.recipients) < model.limit_recipients, line, reply, "too many")
        model.recipients.append(mailbox)
        return
    expect(code[:1] in (b"4", b"5"), line, reply, "RCPT refused oddly")


def check_body(model: Model, body: bytes, reply: bytes) -> None:
    """
    Judge the reply at the end of a message body.
    """
    faults, content, rest = ref_data(body + b"\r\n.\r\n", 100 * 1024 * 1024)
    assert rest == b"", "the strategy sends one message per DATA"
    if faults:
        expected = next(code for code in PRECEDENCE if code in faults)
        expect(reply[4:].startswith(expected), body, reply, "faulty message refused")
        expect(reply[:1] == b"5", body, reply, "faulty message refused")
    else:
        expect(reply.startswith(b"250 2.0.0 Ok: Message "), body, reply, "clean message")
        mid = int(reply.split()[4])
        assert model.sender is not None
        model.accepted.append((mid, model.sender, tuple(model.recipients), content))
        model.messages += 1
    model.reset()


def play(port: int, steps: list[Step], model: Model) -> None:
    """
    Play C{steps} one by one on a fresh connection, judging each reply.
    """
    raw = Raw(port)
    try:
        banner = raw.reply()
        assert banner.startswith(b"220 "), banner
        for step in steps:
            if model.closed:
                break
            sent = b"DATA" if isinstance(step, Data) else step
            raw.send(sent + b"\r\n")
            # A step may hold CRLFs: the gateway sees (and answers) lines.
            for line in sent.split(b"\r\n"):
                if model.closed:
                    break
                reply = raw.reply()
                note(f"{line!r} -> {reply!r}")
                check_line(model, line, reply)
            if isinstance(step, Data) and reply.startswith(b"354"):
                reply = raw.chat(step.body + b"\r\n.\r\n")
                note(f"<body {step.body!r}> -> {reply!r}")
                check_body(model, step.body, reply)
        if model.closed:
            expect(raw.reply() == b"", "<closed>", b"", "the session must have ended")
    finally:
        hang_up(raw)


# -- strategies ----------------------------------------------------------------------


def _one_message(body: bytes) -> bool:
    stream = b"\r\n" + body + b"\r\n.\r\n"
    return stream.find(b"\r\n.\r\n") == 2 + len(body)


rat_recipients = st.sampled_from(
    [
        "<u@example.com>",
        "<U@EXAMPLE.COM>",
        "<x@a.sub.example.net>",
        "<only@example.org>",
        "<postmaster>",
        "<other@example.org>",
        "<v@elsewhere.test>",
        "<u%elsewhere.test@example.com>",
        '<"u@elsewhere.test"@example.com>',
        "<@example.com:u@elsewhere.test>",
        "<elsewhere.test!u@example.com>",
    ]
)
params = st.sampled_from(["", " BODY=8BITMIME", " BODY=7BIT", " SIZE=1000", " SIZE=x", " FOO=1"])
clean_bodies = st.lists(st.text(alphabet="abc .\t:-", max_size=20).map(str.encode), max_size=6).map(
    lambda lines: b"".join(line + b"\r\n" for line in lines)[:-2]
)

commands = st.one_of(
    st.sampled_from(
        [b"EHLO client.test", b"HELO client.test", b"NOOP", b"RSET", b"HELP", b"VRFY u"]
    ),
    st.sampled_from([b"EHLO", b"RSET x", b"DATA x", b"STARTTLS", b"AUTH PLAIN", b"QUIT", b""]),
    st.builds(lambda m, p: f"MAIL FROM:<{m}>{p}".encode(), valid_mailboxes, params),
    st.builds(lambda r: f"RCPT TO:{r}".encode(), rat_recipients),
    st.builds(lambda m: f"RCPT TO:<{m}>".encode(), valid_mailboxes),
    st.builds(lambda t: f"MAIL FROM:<{t}>".encode(), paths),
    st.builds(lambda t: f"RCPT TO:<{t}>".encode(), paths),
    st.builds(lambda v, t: f"{v} {t}".encode(), st.sampled_from(["MAIL", "RCPT"]), path_noise),
    st.binary(max_size=30).filter(lambda b: b"\r\n" not in b),
    st.from_regex(rb"\A[A-Za-z]{1,9}( [ -~]{0,20})?\Z"),
    st.integers(505, 515).map(lambda n: b"NOOP " + b"x" * (n - 7)),
    st.builds(Data, st.one_of(clean_bodies, body_bytes).filter(_one_message)),
)
#: A whole transaction, so that DATA and the store are reached often; its
#: parts are also mutated on their own by L{commands}.
transactions = st.builds(
    lambda mail, rcpt, data: [mail, rcpt, data],
    st.builds(lambda m, p: f"MAIL FROM:<{m}>{p}".encode(), valid_mailboxes, params),
    st.sampled_from([b"RCPT TO:<u@example.com>", b"RCPT TO:<x@a.sub.example.net>"]),
    st.builds(Data, st.one_of(clean_bodies, body_bytes).filter(_one_message)),
)
#: Sessions start with a greeting most of the time, so that the deeper
#: states are reached.
sessions = st.builds(
    lambda greet, parts: ([b"EHLO client.test"] if greet else []) + [s for p in parts for s in p],
    st.booleans(),
    st.lists(st.one_of(commands.map(lambda c: [c]), transactions), max_size=15),
)


class CommandFuzzTests(TestCase):
    #: The long profile (C{make fuzz}) runs for minutes, not seconds.
    timeout = FUZZ_TIMEOUT

    @inlineCallbacks
    def test_sessionsAgainstModel(self) -> Any:
        """
        Every generated session gets only the replies the model allows;
        afterwards the spool holds exactly the messages answered 250, each
        with the envelope and bytes the model expects, and nothing was
        logged as an error.
        """
        gw = Gateway(self)
        policy = gw.listener.policies["ACCEPTED"]
        accepted: list[tuple[int, str, tuple[str, ...], bytes]] = []

        # Sessions are cheap; give this one five times the profile's share.
        @settings(FUZZ, max_examples=5 * FUZZ.max_examples)
        @given(sessions)
        def fuzz(steps: list[Step]) -> None:
            model = Model(policy.max_msgs_per_session, policy.max_rcpts_per_msg)
            play(gw.port, steps, model)
            accepted.extend(model.accepted)

        yield in_thread(fuzz)
        self.assertEqual(self.flushLoggedErrors(), [])
        queued = {message.mid: message for message in gw.queued()}
        self.assertEqual(sorted(queued), sorted(mid for mid, *_ in accepted))
        for mid, sender, recipients, content in accepted:
            envelope = queued[mid].envelope
            self.assertEqual(envelope.mail_from.lower(), sender.lower())
            self.assertEqual([r.lower() for r in envelope.rcpt_to], [r.lower() for r in recipients])
            body = gw.body(mid)
            self.assertTrue(body.startswith(b"Received: "))
            self.assertTrue(body.endswith(b"\r\n" + content), (body, content))
