"""An MTA with its own HAT and message store (mail for example.com to ./Maildir)."""

import mailbox

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from esa_tls.config.load import parse_config
from esa_tls.config.model import AccessRule, MailFlowPolicy
from esa_tls.inbound.listener import ListenerFactory
from esa_tls.interfaces import IHostAccessTable, IIncomingMessage, IMessageStore
from esa_tls.values import HATVerdict

CONFIG = 'interfaces.Loopback.address = "127.0.0.1/8"\nlisteners.Custom = {type = "public", interface = "Loopback", port = 2525, rat = ["example.com"]}'


@implementer(IHostAccessTable)
class LoopbackOnly:
    def lookup(self, address):  # ACCEPT (never RELAY) for loopback, REJECT for the rest
        rule = AccessRule.ACCEPT if address.startswith("127.") else AccessRule.REJECT
        return succeed(HATVerdict("LOOPBACK", MailFlowPolicy(name="LOCAL", rule=rule), address))


@implementer(IIncomingMessage)
class MaildirMessage:
    def __init__(self, box, mid):
        self.box, self.mid, self.chunks = box, mid, []
        self.write, self.abort = self.chunks.append, self.chunks.clear

    def commit(self):  # Maildir does not fsync: a production store must
        return deferToThread(lambda: self.box.add(b"".join(self.chunks)) and self.mid)


@implementer(IMessageStore)
class MaildirStore:
    def __init__(self, path):
        self.box, self.count = mailbox.Maildir(path), 0

    def new_message(self, envelope):
        self.count += 1
        return MaildirMessage(self.box, self.count)

    def has_space(self, size):  # a production store checks its disk (452 4.3.1)
        return True


def build(port, maildir):
    config = parse_config(CONFIG, "custom_mta")
    factory = ListenerFactory(
        config.listeners["Custom"], hat=LoopbackOnly(), store=MaildirStore(maildir), clock=reactor
    )
    return reactor.listenTCP(port, factory, interface="127.0.0.1")


if __name__ == "__main__":
    build(2525, "Maildir")
    reactor.run()
