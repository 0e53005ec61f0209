// Command coredns is CoreDNS v1.14.7 with only the plugins the node's Corefile uses (envtest/node.py
// _corefile), built the way CoreDNS documents for custom builds: blank-import the wanted plugins and set
// dnsserver.Directives to them, in the order of CoreDNS's own plugin.cfg (core/dnsserver/zdirectives.go).
//
// Why not `go install github.com/coredns/coredns`: its core/plugin package links every plugin with its cloud
// SDK (route53, azure, clouddns, etcd, ...), 21 minutes cold on two cores; the node needs six plugins.
// A plugin missing here makes CoreDNS reject the Corefile ("unknown directive"), and
// tests/unit/test_coredns_build.py fails first.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The Corefile's plugins; each registers itself with Caddy in its init.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives is CoreDNS's plugin.cfg order restricted to the imported plugins: a request passes them top
// to bottom, so the order is CoreDNS's, not ours.
var directives = []string{
	"bind",
	"ready",
	"errors",
	"cache",
	"kubernetes",
	"forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
