// Command coredns is CoreDNS v1.15.0 with the plugins the real node's Corefile uses (bind, errors, ready,
// kubernetes, cache, log, health): CoreDNS's own main links every plugin and its cloud SDKs, which takes
// minutes to compile and is never used here. The plugins' order is CoreDNS's own (dnsserver.Directives).
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
