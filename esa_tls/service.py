# -*- test-case-name: tests.test_gateway -*-
"""
L{GatewayService}: the whole gateway as one Twisted service.

Everything that can fail is done when the service is I{made} (config
validated, certificates loaded, spool recovered), so that C{twistd} refuses
to start rather than start half-configured; listening starts in
C{startService}.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IResolver, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from esa_tls.alerts.certificates import CertificateWatch
from esa_tls.alerts.dispatcher import AlertDispatcher
from esa_tls.alerts.hooks import HookConfigError, build_hooks
from esa_tls.config.errors import ConfigError, ConfigFault
from esa_tls.config.load import LoadResult, load_config_with_warnings
from esa_tls.config.model import Listener, SpoolSync
from esa_tls.hat.table import HostAccessTable
from esa_tls.ids import IdAllocator
from esa_tls.inbound.auth import PasswordFile
from esa_tls.inbound.limits import RecipientRateLimiter
from esa_tls.inbound.listener import ListenerFactory
from esa_tls.inbound.proxy import ProxyProtocolFactory, TrustedProxies
from esa_tls.inbound.transport import WriteThroughEndpoint
from esa_tls.maillog import MailLog, MailLogFile, mail_log_path
from esa_tls.outbound.mx import resolver_from_config
from esa_tls.outbound.queue import QueueManager
from esa_tls.outbound.result import DeliveryResult
from esa_tls.report.counters import TLSCounters
from esa_tls.report.delivery import record_delivery
from esa_tls.report.storage import report_directory
from esa_tls.spool import DurableSpool
from esa_tls.spool.fs import WholeFileSystemSync
from esa_tls.tls.demo import demo_warning_lines, uses_demo_with_tls
from esa_tls.tls.store import CertificateStore, certificate_faults
from esa_tls.watch import FileWatcher
from esa_tls.workers import SharedListenerFactory, WorkerRole

log = Logger()


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
        self.config = config
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
        self.resolver = resolver if resolver is not None else resolver_from_config(config, reactor)
        users = config.system.smtp_auth_users
        self.auth_checker = PasswordFile(users) if users else None
        try:
            hooks = build_hooks(
                config.alerts.hooks,
                reactor=reactor,
                store=self.spool,
                data_dir=self.data_dir,
                hostname=config.system.hostname,
            )
        except HookConfigError as e:
            raise ConfigError([ConfigFault(config.source, None, "alerts.hooks", str(e))]) from None
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
            admin_service(config.admin.listen, site, reactor).setServiceParent(self)
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
        self.watcher = FileWatcher(self._watched_files, self.reload, reactor, watch_interval)
        for listener in config.listeners.values():
            factory = self._factory(listener)
            self.factories[listener.name] = factory
            service = StreamServerEndpointService(
                self._endpoint(listener), self._wrap(listener, factory)
            )
            service.setName(listener.name)
            service.setServiceParent(self)

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
            policy = listener.default_policy
            served = TLSMemoryBIOFactory(factory.tls_creator(policy), False, factory)
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

    def startService(self) -> None:
        self.mail_log.open()
        for warning in self.loaded.warnings:
            log.warn("{source}: {problem}", source=self.config.source, problem=warning)
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
        paths = [] if config.source.startswith("<") else [config.source]
        for certificate in config.certificates.values():
            paths += [p for p in (certificate.cert, certificate.key, certificate.chain) if p]
        for listener in config.listeners.values():
            paths += [p.client_ca for p in listener.policies.values() if p.client_ca]
        return sorted(set(paths))

    def _sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> list[str]:
        """
        Re-read the configuration file and the certificates.

        Policies, HAT and RAT of existing listeners take effect for new
        connections at once; sessions in progress keep what they started
        with.  So does C{proxy_trusted}.  A file that does not validate
        changes nothing.  A certificate that does not validate is refused and
        the old one stays in service.  Adding, removing or moving listeners,
        and turning C{proxy_protocol} on or off, need a restart (said in the
        log).

        @return: the problems found, one per line (empty: all applied).
        """
        problems: list[str] = []
        if self.config.source.startswith("<"):
            new_config = self.config
        else:
            try:
                new_config = load_config_with_warnings(self.config.source).config
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
        for key in ("data_dir", "spool_sync", "worker_cpu_affinity"):
            if getattr(new_config.system, key) != getattr(self.config.system, key):
                problems.append(f"system: {key} changed; restart to apply")
        for name, listener in new_config.listeners.items():
            factory = self.factories.get(name)
            old = self.config.listeners.get(name)
            if (
                factory is None
                or old is None
                or (old.interface, old.port) != (listener.interface, listener.port)
            ):
                problems.append(f"listener {name}: added or moved; restart to apply")
                continue
            factory.config = listener
            factory.hat = HostAccessTable(listener, self.resolver, clock=self.reactor)
            # The PROXY reader is in front of the listening socket's factory,
            # put there (or not) when the listener started: compared with
            # what runs, not with the last file, so that the warning stays
            # until the restart.
            proxy = self.proxies.get(name)
            if (proxy is not None) != listener.proxy_protocol:
                problems.append(f"listener {name}: proxy_protocol changed; restart to apply")
            elif proxy is not None:
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
        self.config = new_config
        self.alerts.settings = new_config.alerts
        self.certificate_watch.config = new_config
        if self.queue is not None:
            self.queue.config = new_config
        for problem in problems:
            log.warn("reload: {problem}", problem=problem)
        log.info("configuration reloaded from {source}", source=new_config.source)
        return problems

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop listening, say 421 to the sessions still open, and wait for
        messages already being committed to reach the disk.
        """
        self.watcher.stop()
        yield super().stopService()
        waits: list[Deferred[Any]] = [f.shutdown() for f in self.factories.values()]
        yield DeferredList(waits)
        # The report service made its last flush when it stopped, above;
        # sessions that closed since (those the 421 just ended, and any
        # whose QUIT crossed the stop) are counted only by this one.
        yield self.counters.flush().addErrback(lambda _: None)
        yield self.spool.close()
        self.mail_log.close()
