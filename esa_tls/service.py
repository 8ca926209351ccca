# -*- test-case-name: tests.test_gateway -*-
"""
L{GatewayService}: the whole gateway as one Twisted service.

Everything that can fail is done when the service is I{made} (config
validated, certificates loaded, spool recovered), so that C{twistd} refuses
to start rather than start half-configured; listening starts in
C{startService}.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IResolver, IStreamServerEndpoint
from twisted.logger import Logger

from esa_tls.alerts.certificates import CertificateWatch
from esa_tls.alerts.dispatcher import AlertDispatcher
from esa_tls.alerts.hooks import HookConfigError, build_hooks
from esa_tls.config.errors import ConfigError, ConfigFault, render_path
from esa_tls.config.load import LoadResult, load_config_with_warnings
from esa_tls.config.model import GatewayConfig, Listener, SpoolSync
from esa_tls.hat.table import HostAccessTable
from esa_tls.ids import IdAllocator
from esa_tls.inbound.auth import PasswordFile
from esa_tls.inbound.limits import RecipientRateLimiter
from esa_tls.inbound.listener import ListenerFactory
from esa_tls.inbound.proxy import ProxyProtocolFactory, TrustedProxies
from esa_tls.inbound.transport import WriteThroughEndpoint, WriteThroughTLSFactory
from esa_tls.maillog import MailLog, MailLogFile, mail_log_path
from esa_tls.outbound.mx import MXResolver, resolver_from_config
from esa_tls.outbound.queue import QueueManager
from esa_tls.outbound.result import DeliveryResult
from esa_tls.report.counters import TLSCounters
from esa_tls.report.delivery import record_delivery
from esa_tls.report.storage import report_directory
from esa_tls.spool import DurableSpool
from esa_tls.spool.fs import WholeFileSystemSync
from esa_tls.tls.demo import demo_warning_lines, uses_demo_with_tls
from esa_tls.tls.store import CertificateStore, certificate_faults, source_lines
from esa_tls.watch import FileWatcher
from esa_tls.workers import SharedListenerFactory, WorkerPool, WorkerRole, listen_error_text

log = Logger()

#: C{[system]} keys a reload applies; a change to any other needs a restart.
LIVE_SYSTEM_KEYS = frozenset({"hostname", "resolvers", "smtp_auth_users"})

#: Listener keys a reload applies to new connections; a change to any other
#: (C{port}, C{protocol}, C{proxy_protocol}, C{tcp_queue}, the interface's
#: address) needs a restart: those are fixed when the port is opened.
LIVE_LISTENER_KEYS = frozenset(
    {
        "type",
        "default_domain",
        "max_concurrency",
        "domain_map",
        "certificate",
        "rat",
        "policies",
        "hat",
        "sni",
        "tls_protocols",
        "tls_ciphers",
        "hostname",
        "proxy_trusted",
    }
)

#: Listener keys that mean something only with another key that needs a
#: restart: while a change of that one waits for the restart, they keep
#: their old value too, said by that one's line (C{proxy_trusted} is the
#: list the PROXY reader started with, or not, uses).
LISTENER_KEYS_FOLLOWING = {"proxy_trusted": "proxy_protocol"}

#: Sections of the configuration a reload applies whole.  C{system} and
#: C{listeners} are applied key by key; any other section (C{admin}) needs a
#: restart.
LIVE_SECTIONS = frozenset(
    {
        "interfaces",
        "listener_settings",
        "certificates",
        "destinations",
        "smtp_routes",
        "alerts",
        "source",
    }
)


def _reconcile(
    section: str,
    old: Any,
    new: Any,
    live: Callable[[str, Any, Any], bool],
    following: Mapping[str, str] | None = None,
) -> tuple[Any, list[str], list[str]]:
    """
    Compare two values of one C{attrs} class key by key.

    @param live: whether a change of a key from the first value to the
        second can be applied without a restart.
    @param following: keys kept, and not said, while the key they follow
        changes (see L{LISTENER_KEYS_FOLLOWING}).
    @return: C{new} with the old value of every key that needs a restart
        (what will be in force), the changes applied
        (C{"<section>: <key> changed; applied"}), and the changes that need a
        restart (C{"<section>: <key> changed; restart to apply"}).
    """
    kept: dict[str, Any] = {}
    applied: list[str] = []
    restart: list[str] = []
    for field in attrs.fields(type(old)):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        leader = (following or {}).get(field.name)
        if leader is not None and getattr(old, leader) != getattr(new, leader):
            kept[field.name] = before
            continue
        if live(field.name, before, after):
            applied.append(f"{section}: {field.name} changed; applied")
        else:
            kept[field.name] = before
            restart.append(f"{section}: {field.name} changed; restart to apply")
    return (attrs.evolve(new, **kept) if kept else new), applied, restart


def _live_listener_key(key: str, before: Any, after: Any) -> bool:
    if key == "interface":
        # Its name (in the mail log) can change; its address is bound.
        return bool(before.ip == after.ip)
    return key in LIVE_LISTENER_KEYS


def _stop_resolver(resolver: Any) -> None:
    """
    Stop a resolver made by L{resolver_from_config} that is replaced: a
    C{twisted.names} client reading C{resolv.conf} re-reads it on a timer.
    """
    for each in getattr(resolver, "resolvers", [resolver]):
        call = getattr(each, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()


class GatewayService(MultiService):
    """
    The listeners, the spool and the parts they share.

    @ivar factories: the L{ListenerFactory} of each listener, by name.
    @ivar proxies: the L{ProxyProtocolFactory} in front of each
        C{proxy_protocol} listener, by name (a reload gives it the new
        C{proxy_trusted}).
    """

    def __init__(
        self,
        loaded: LoadResult,
        reactor: Any | None = None,
        resolver: IResolver | None = None,
        watch_interval: float = 5.0,
        worker: WorkerRole | None = None,
    ) -> None:
        """
        @param worker: this process's part in a multi-worker gateway
            (L{esa_tls.workers}): listen on the sockets the parent bound,
            count connections in the shared table, and leave the singular
            jobs (certificate alerts, admin page) to the parent.  C{None}:
            the whole gateway is this one process.
        @raise ConfigError: something the loader cannot check fails, such
            as a certificate a listener serves (L{certificate_faults}).
        """
        super().__init__()
        self.worker = worker
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor: Any = reactor
        self.loaded = loaded
        config = loaded.config
        #: The file a reload reads, made absolute now: C{twistd --rundir}
        #: (or C{--chroot}) changes the directory after the service is
        #: made, and a relative name would then name another file, or none.
        self.config_path: str | None = (
            None if config.source.startswith("<") else os.path.abspath(config.source)
        )
        #: What the listeners serve that a reload did not yet change, kept
        #: here to be said at start-up.
        self._not_started: list[str] = []
        if worker is not None:
            # A worker started again after a reload that added a listener:
            # the parent bound no socket for it, and the other processes do
            # not serve it either until a restart.
            unbound = [name for name in config.listeners if name not in worker.sockets]
            if unbound:
                self._not_started = [
                    f"listener {name}: added; restart to apply" for name in unbound
                ]
                config = attrs.evolve(
                    config,
                    listeners={
                        name: listener
                        for name, listener in config.listeners.items()
                        if name not in unbound
                    },
                )
        #: The configuration in force: the file's, except for the settings a
        #: reload could not apply (L{reload}).
        self.config = config
        #: What each child service that opens a port serves, for the
        #: message when it cannot (L{privilegedStartService}).
        self._ports: dict[Any, str] = {}
        # A certificate a listener serves must load now: the listener would
        # otherwise offer STARTTLS and fail every handshake.
        faults = certificate_faults(config)
        if faults:
            raise ConfigError(faults)
        self.data_dir = os.path.abspath(config.system.data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        # Every process writes its mail log lines straight to mail.log, one
        # write per reactor turn: not as events through the global log
        # publisher, and not also into twistd.log (a quarter of the
        # reactor's time in the profile, issue 7).
        self.mail_log = MailLogFile(mail_log_path(self.data_dir), reactor)
        self.maillog = MailLog(writer=self.mail_log)
        self.certificates = CertificateStore(config, self.data_dir)
        # Messages up to 64 KiB are received in memory and their files made
        # by the commit's thread job: creating a file can wait on the file
        # system journal, and the reactor thread must not (issue 7).
        spool_dir = os.path.join(self.data_dir, "spool")
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        self.spool = DurableSpool(
            spool_dir,
            reactor,
            filesystem=(
                WholeFileSystemSync(spool_dir)
                if config.system.spool_sync is SpoolSync.FILESYSTEM
                else None
            ),
            memory_limit=64 * 1024,
            # A worker only receives; the primary process delivers.
            receive_only=worker is not None and not worker.primary,
        )
        self.icids = IdAllocator(os.path.join(self.data_dir, "icid.counter"))
        # Recipients per hour per IP count for the whole gateway: in a
        # multi-worker gateway, in the table the workers share.
        self.rates: RecipientRateLimiter = (
            worker.rates(reactor) if worker is not None else RecipientRateLimiter(reactor)
        )
        try:
            hooks = build_hooks(
                config.alerts.hooks,
                reactor=reactor,
                store=self.spool,
                data_dir=self.data_dir,
                hostname=config.system.hostname,
            )
        except HookConfigError as e:
            path = e.path or ("alerts", "hooks")
            line = source_lines(config).line_of(path)
            fault = ConfigFault(config.source, line, render_path(path), e.reason)
            raise ConfigError([fault]) from None
        self._own_resolver = resolver is None
        self.resolver = resolver if resolver is not None else resolver_from_config(config, reactor)
        users = config.system.smtp_auth_users
        self.auth_checker = PasswordFile(users) if users else None
        self.alerts = AlertDispatcher(
            config.alerts, hooks, reactor, merge_interval=config.alerts.merge_interval
        )
        self.counters = TLSCounters(
            report_directory(self.data_dir),
            reactor,
            worker=str(worker.index) if worker is not None else "0",
        )
        self.counters.service().setServiceParent(self)
        self.certificate_watch = CertificateWatch(config, self.certificates, self.alerts.dispatch)
        primary = worker is None or worker.primary
        if primary:
            self.certificate_watch.service(reactor).setServiceParent(self)
        if config.admin.listen and primary:
            # twisted.web and prometheus_client, only where the admin page
            # is served: every worker would otherwise hold them (issue 7).
            from esa_tls.report.admin import admin_service, make_admin_site

            site = make_admin_site(self.counters, self.alerts)
            admin = admin_service(config.admin.listen, site, reactor)
            admin.setServiceParent(self)
            self._ports[admin] = f"[admin] listen {json.dumps(config.admin.listen)}"
        # One delivery engine per spool: in a multi-worker gateway the
        # primary process delivers what every worker accepted.
        self.queue: QueueManager | None = None
        if primary:
            self.queue = QueueManager(
                reactor,
                self.spool,
                config,
                self.resolver,
                dcid_allocator=IdAllocator(os.path.join(self.data_dir, "dcid.counter")).next,
                maillog=self.maillog,
                on_tls_failure=self.alerts.on_tls_failure,
                on_result=self._delivered,
            )
            self.queue.setServiceParent(self)
        self.factories: dict[str, ListenerFactory] = {}
        self.proxies: dict[str, ProxyProtocolFactory] = {}
        # Listeners a reload removed, whose sessions may still be open.
        self._removed: list[ListenerFactory] = []
        self.watcher = FileWatcher(self._watched_files, self.reload, reactor, watch_interval)
        for listener in config.listeners.values():
            factory = self._factory(listener)
            self.factories[listener.name] = factory
            service = StreamServerEndpointService(
                self._endpoint(listener), self._wrap(listener, factory)
            )
            service.setName(listener.name)
            service.setServiceParent(self)
            self._ports[service] = (
                f"listener {listener.name} on {listener.interface.ip} port {listener.port}"
            )

    @classmethod
    def from_file(cls, path: str | None, reactor: Any | None = None) -> GatewayService:
        """
        @raise esa_tls.config.errors.ConfigError: the file is not valid.
        """
        return cls(load_config_with_warnings(path), reactor)

    def _delivered(self, result: DeliveryResult) -> None:
        record_delivery(result, self.counters, self.alerts)

    def _factory(self, listener: Listener) -> ListenerFactory:
        shared = self.worker.counter(listener.name) if self.worker is not None else None
        factory_class = ListenerFactory if shared is None else SharedListenerFactory
        factory = factory_class(
            listener,
            hostname=self.config.system.hostname,
            settings=self.config.listener_settings,
            hat=HostAccessTable(listener, self.resolver, clock=self.reactor),
            store=self.spool,
            maillog=self.maillog,
            clock=self.reactor,
            icids=self.icids,
            rates=self.rates,
            certificates=self.certificates,
            auth_checker=self.auth_checker,
            counters=self.counters,
        )
        if isinstance(factory, SharedListenerFactory) and shared is not None:
            factory.share(shared)
        return factory

    def _endpoint(self, listener: Listener) -> IStreamServerEndpoint:
        return WriteThroughEndpoint(self._tcp_endpoint(listener))

    def _tcp_endpoint(self, listener: Listener) -> IStreamServerEndpoint:
        if self.worker is not None:
            adopted = self.worker.endpoint(self.reactor, listener.name)
            if adopted is not None:
                return adopted
        ip = listener.interface.ip
        if ":" in ip:
            return TCP6ServerEndpoint(
                self.reactor, listener.port, backlog=listener.tcp_queue, interface=ip
            )
        return TCP4ServerEndpoint(
            self.reactor, listener.port, backlog=listener.tcp_queue, interface=ip
        )

    def _wrap(self, listener: Listener, factory: ListenerFactory) -> Any:
        served: Any = factory
        if listener.implicit_tls:
            # RFC 8314 implicit TLS: the handshake comes first, and the
            # session sees an ISSLTransport, so it never offers STARTTLS.
            served = WriteThroughTLSFactory(factory.implicit_tls_creator(), False, factory)
        if listener.proxy_protocol:
            # Behind HAProxy: the PROXY header comes before anything else
            # (TLS included), and names the client the HAT must judge; only
            # the proxies in proxy_trusted may send one.
            proxy = ProxyProtocolFactory(
                served,
                self.reactor,
                trusted=TrustedProxies(listener.proxy_trusted),
                listener=listener.name,
            )
            self.proxies[listener.name] = proxy
            served = proxy
        return served

    # -- running -----------------------------------------------------------

    def privilegedStartService(self) -> None:
        """
        Open the ports (C{twistd} calls this before it drops privileges).
        A port that cannot be opened stops start-up, naming the listener
        (or the admin page), its address and the reason, with exit status
        1 as with several workers (L{esa_tls.tap}): nothing runs
        half-configured.  A L{StreamServerEndpointService} would only log
        the error as unhandled and let the gateway run without the port.
        """
        Service.privilegedStartService(self)
        for child in self:
            if isinstance(child, StreamServerEndpointService):
                child._raiseSynchronously = True
            try:
                child.privilegedStartService()
            except Exception as e:
                log.critical(
                    "esa-tls: cannot listen: {what}: {why}",
                    what=self._ports.get(child, getattr(child, "name", None) or repr(child)),
                    why=listen_error_text(e),
                )
                raise SystemExit(1) from None

    def startService(self) -> None:
        self.mail_log.open()
        for warning in self.loaded.warnings:
            log.warn("{source}: {problem}", source=self.config.source, problem=warning)
        for problem in self._not_started:
            log.warn("{problem}", problem=problem)
        for listener in self.config.listeners.values():
            if uses_demo_with_tls(listener):
                for line in demo_warning_lines(listener.name):
                    log.warn("{line}", line=line)
        try:
            signal.signal(signal.SIGHUP, self._sighup)
        except ValueError:  # not the main thread (tests)
            pass
        super().startService()
        self.watcher.start()
        for listener in self.config.listeners.values():
            log.info(
                "listener {name} on {ip} port {port} ({protocol})",
                name=listener.name,
                ip=listener.interface.ip,
                port=listener.port,
                protocol=listener.protocol,
            )

    def _watched_files(self) -> list[str]:
        """
        The files a change of which should reload the gateway.
        """
        config = self.config
        paths = [] if self.config_path is None else [self.config_path]
        for certificate in config.certificates.values():
            paths += [p for p in (certificate.cert, certificate.key, certificate.chain) if p]
        for listener in config.listeners.values():
            paths += [p.client_ca for p in listener.policies.values() if p.client_ca]
        return sorted(set(paths))

    def _sighup(self, signum: int, frame: object) -> None:
        # SIGHUP is also what logrotate's postrotate sends: every process
        # of the gateway gets it, and each goes on in a new mail.log.
        self.reactor.callFromThread(self.mail_log.reopen)
        self.reactor.callFromThread(self.reload)

    def reload(self) -> list[str]:
        """
        Re-read the configuration file and the certificates, and run what
        they say, except what only a restart can change, which is said.

        Applied at once, to new connections: policies, HAT and RAT, a
        listener's type, default domain, Max Concurrency, host name,
        certificate, SNI, TLS protocols and ciphers and C{proxy_trusted}
        (given to its PROXY reader); the global listener
        settings; C{[system] hostname}, C{resolvers} and
        C{smtp_auth_users} (AUTH offered and checked against the new file,
        or not at all); certificates, Destination Controls, routes and
        alerts.  Sessions in progress keep the policy the HAT gave them (and
        an authenticated session its user).  A listener removed from the
        file stops listening; its sessions in progress may finish.

        Needing a restart, each logged as C{<section>: <key> changed;
        restart to apply} while the old value stays in force for it alone: a
        listener added, a listener's address, C{port}, C{protocol},
        C{proxy_protocol} and C{tcp_queue}, C{[system] data_dir},
        C{spool_sync} and C{worker_cpu_affinity}, and C{[admin]}.  A file
        that does not validate changes nothing.  A certificate that does not
        validate is refused and the old one stays in service, and so do
        alert hooks that cannot be built.

        @return: the problems found, one per line (empty: all applied).
        """
        problems: list[str] = []
        if self.config_path is None:
            new_config = self.config
        else:
            try:
                new_config = load_config_with_warnings(self.config_path).config
            except ConfigError as e:
                log.error("reload refused, configuration unchanged:\n{error}", error=str(e))
                return [str(e)]
        # A certificate a listener serves that fails validation changes
        # nothing either: the old configuration and certificates stay.
        faults = certificate_faults(new_config)
        if faults:
            refused = str(ConfigError(faults))
            log.error("reload refused, configuration unchanged:\n{error}", error=refused)
            return [refused]
        problems += self.certificates.reload(new_config)
        old = self.config
        applied: list[str] = []
        hooks = None
        if (new_config.alerts.hooks, new_config.system.hostname) != (
            old.alerts.hooks,
            old.system.hostname,
        ):
            try:
                hooks = build_hooks(
                    new_config.alerts.hooks,
                    reactor=self.reactor,
                    store=self.spool,
                    data_dir=self.data_dir,
                    hostname=new_config.system.hostname,
                )
            except HookConfigError as e:
                # As with a certificate: the hooks in service stay.
                problems.append(f"alerts.hooks refused: {e}; the hooks in service stay")
                new_config = attrs.evolve(
                    new_config, alerts=attrs.evolve(new_config.alerts, hooks=old.alerts.hooks)
                )
        system, done, restart = _reconcile(
            "system", old.system, new_config.system, lambda key, _a, _b: key in LIVE_SYSTEM_KEYS
        )
        applied += done
        problems += restart
        sections: dict[str, Any] = {"system": system}
        for field in attrs.fields(GatewayConfig):
            name = field.name
            if name in ("system", "listeners") or name in LIVE_SECTIONS:
                continue
            before, after = getattr(old, name), getattr(new_config, name)
            if before == after:
                continue
            sections[name] = before
            if attrs.has(type(before)):
                problems += _reconcile(name, before, after, lambda *_: False)[2]
            else:
                problems.append(f"{name} changed; restart to apply")
        # (A listener's interface is compared with the listener.)
        for name in sorted(LIVE_SECTIONS - {"interfaces", "source"}):
            if getattr(old, name) != getattr(new_config, name):
                applied.append(f"{name} changed; applied")
        listeners: dict[str, Listener] = {}
        for name, listener in new_config.listeners.items():
            current = old.listeners.get(name)
            if current is None or name not in self.factories:
                problems.append(f"listener {name}: added; restart to apply")
                continue
            listeners[name], done, restart = _reconcile(
                f"listener {name}", current, listener, _live_listener_key, LISTENER_KEYS_FOLLOWING
            )
            applied += done
            problems += restart
        config = attrs.evolve(new_config, listeners=listeners, **sections)
        if self._own_resolver and config.system.resolvers != old.system.resolvers:
            _stop_resolver(self.resolver)
            self.resolver = resolver_from_config(config, self.reactor)
        if config.system.smtp_auth_users != old.system.smtp_auth_users:
            users = config.system.smtp_auth_users
            self.auth_checker = PasswordFile(users) if users else None
        for name, listener in listeners.items():
            factory = self.factories[name]
            factory.reconfigure(
                listener,
                hat=HostAccessTable(listener, self.resolver, clock=self.reactor),
                hostname=config.system.hostname,
                settings=config.listener_settings,
                auth_checker=self.auth_checker,
            )
            proxy = self.proxies.get(name)
            if proxy is not None:
                # The PROXY reader in front of the listening socket's
                # factory, there (or not) since the listener started (a
                # proxy_protocol change needs a restart, said above).
                proxy.trusted = TrustedProxies(listener.proxy_trusted)
            if (
                isinstance(factory, SharedListenerFactory)
                and listener.max_concurrency > factory.shared.capacity
            ):
                problems.append(
                    f"listener {name}: max_concurrency {listener.max_concurrency} is above "
                    f"the {factory.shared.capacity} the workers' shared per-IP table was "
                    "made for; addresses beyond it are not counted across workers until "
                    "a restart"
                )
        removed = [name for name in self.factories if name not in listeners]
        for name in removed:
            applied.append(self._remove_listener(name))
        self.config = config
        self.alerts.settings = config.alerts
        self.alerts.merge_interval = config.alerts.merge_interval
        if hooks is not None:
            self.alerts.hooks = hooks
        self.certificate_watch.config = config
        for child in self:
            if isinstance(child, WorkerPool):
                child.reloaded()
        if self.queue is not None:
            self.queue.config = config
            if self.queue.resolver is not self.resolver:
                self.queue.resolver = self.resolver
                self.queue.mx_resolver = MXResolver(self.resolver, clock=self.queue.clock)
        for change in applied:
            log.info("reload: {change}", change=change)
        for problem in problems:
            log.warn("reload: {problem}", problem=problem)
        log.info("configuration reloaded from {source}", source=config.source)
        return problems

    def _remove_listener(self, name: str) -> str:
        """
        Stop listener C{name}, which a reload removed: no new connection is
        accepted (one accepted already gets a 421), and the port is closed;
        in a multi-worker gateway, once every process has reloaded.

        @return: what was done, for the log.
        """
        factory = self.factories.pop(name)
        self.proxies.pop(name, None)
        factory.close()
        self._removed.append(factory)
        service = self.namedServices.get(name)
        if isinstance(service, StreamServerEndpointService):
            stopped = service.disownServiceParent()
            if stopped is not None:
                stopped.addErrback(
                    lambda failure: log.failure(
                        "listener {name}: stopping failed", failure, name=name
                    )
                )
        if self.worker is not None:
            if self.worker.primary:
                for child in self:
                    if isinstance(child, WorkerPool):
                        child.release(name)
            else:
                fd = self.worker.release(name)
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        listener = factory.config
        return (
            f"listener {name}: removed; stopped listening on "
            f"{listener.interface.ip} port {listener.port}"
        )

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop listening, say 421 to the sessions still open, and wait for
        messages already being committed to reach the disk.
        """
        self.watcher.stop()
        yield super().stopService()
        waits: list[Deferred[Any]] = [
            f.shutdown() for f in [*self.factories.values(), *self._removed]
        ]
        yield DeferredList(waits)
        # The report service made its last flush when it stopped, above;
        # sessions that closed since (those the 421 just ended, and any
        # whose QUIT crossed the stop) are counted only by this one.
        yield self.counters.flush().addErrback(lambda _: None)
        yield self.spool.close()
        self.mail_log.close()
