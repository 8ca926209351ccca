"""
The package is installed the way users get it: the twistd plugin is found.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase


class PluginTests(SynchronousTestCase):
    def test_twistdFindsPlugin(self) -> None:
        """
        C{twistd --help} lists C{esa-tls}: the plugin is discoverable.
        """
        names = [p.tapname for p in getPlugins(IServiceMaker)]
        self.assertIn("esa-tls", names)
