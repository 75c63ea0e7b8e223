// Command gateway is the access layer of a SET: it routes every red packet request by packet ID
// to the cell server that owns it (cellserver/gateway) and serves Prometheus metrics beside the
// API. It reads the routing table from a file it reloads on change (the routing ConfigMap in
// Kubernetes, routing.json in a local SET) and signs every call to a cell with the key in
// -signing-key-file.
//
// It never touches a database and holds no packet state: everything it knows comes from the
// routing file and the cells' answers, which it passes on unchanged.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/redpacketset/redpacket/cellserver/gateway"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], nil); err != nil {
		slog.Error("gateway stopped", "err", err)
		os.Exit(1)
	}
}

// run serves until ctx ends. listening, when set, is told the address once the listener is up
// (tests listen on port 0).
func run(ctx context.Context, args []string, listening func(addr string)) error {
	cfg, err := parseFlags(args)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	cells, err := cfg.cellAccess()
	if err != nil {
		return err
	}

	watcher, err := routing.NewWatcher(cfg.routingFile, cfg.watchInterval, log)
	if err != nil {
		return err
	}
	// The Go and process collectors come from the default registry: the collectors package
	// would link database/sql (its DB stats collector) into a binary that has no database.
	reg := prometheus.NewRegistry()
	gatherer := prometheus.Gatherers{prometheus.DefaultGatherer, reg}
	gw, err := gateway.New(gateway.Config{
		Routing:         watcher,
		Signer:          signing.NewSigner(cells.key),
		Resolver:        cells.resolver,
		Registerer:      reg,
		Log:             log,
		ProbeInterval:   cfg.probeInterval,
		StartupGrace:    cfg.startupGrace,
		ProbeFailures:   cfg.probeFailures,
		UpstreamTimeout: cfg.upstream,
		Region:          cfg.region,
		TLS:             cells.tls,
	})
	if err != nil {
		return err
	}
	// Routing and probing outlive the shutdown signal: requests still arrive while draining.
	bgCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	go watcher.Run(bgCtx)
	go gw.Run(bgCtx)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("/", gw.Handler())
	return serve(ctx, cfg, log, mux, gw, func(addr string) {
		if listening != nil {
			listening(addr)
		}
		log.Info("gateway listening", "addr", addr, "routing_file", cfg.routingFile, "endpoints", cfg.endpoints, "epoch", watcher.LoadedEpoch())
	})
}

// config is the gateway's command line.
type config struct {
	listen, routingFile, keyFile, endpoints, namespace               string
	serverPort, region, probeFailures                                int
	probeInterval, watchInterval, upstream, drainDelay, startupGrace time.Duration
	logLevel, serverScheme, serverCA, tlsCert, tlsKey                string
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", ":8080", "address to serve the API, /healthz, /readyz and /metrics on")
	fs.StringVar(&c.routingFile, "routing-file", "", "routing table file (routing.json); required")
	fs.StringVar(&c.keyFile, "signing-key-file", "", "file holding the key that signs calls to cells (≥ 32 bytes); required")
	fs.StringVar(&c.endpoints, "endpoints", "static", "where cell servers come from: static (the routing table's endpoints) or dns (the cell's headless Service)")
	fs.StringVar(&c.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the cells' Services (dns endpoints)")
	fs.IntVar(&c.serverPort, "server-port", 8080, "cell server port (dns endpoints; 0 reads SRV records)")
	fs.IntVar(&c.region, "region", 0, "region this gateway serves; packets of other regions are refused with 421")
	fs.DurationVar(&c.probeInterval, "probe-interval", time.Second, "how often cell servers' /readyz are probed")
	fs.DurationVar(&c.startupGrace, "startup-grace", time.Minute, "at start, /readyz waits at most this long for a ready server in every cell in force")
	fs.IntVar(&c.probeFailures, "probe-failures", 3, "unanswered probes in a row that take a ready server out of rotation (one \"not ready\" answer does at once)")
	fs.DurationVar(&c.watchInterval, "routing-interval", time.Second, "how often the routing file is checked for changes")
	fs.DurationVar(&c.upstream, "upstream-timeout", 10*time.Second, "timeout of one call to a cell")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.serverScheme, "server-scheme", "http", "scheme of cell servers found by dns endpoints: http or https")
	fs.StringVar(&c.serverCA, "server-ca-file", "", "PEM CA bundle that signs cell servers' certificates (https cells); empty: system roots")
	fs.StringVar(&c.tlsCert, "tls-cert-file", "", "PEM certificate to serve HTTPS with (with -tls-key-file); empty: plain HTTP")
	fs.StringVar(&c.tlsKey, "tls-key-file", "", "PEM private key for -tls-cert-file")
	fs.DurationVar(&c.drainDelay, "drain-delay", 5*time.Second, "on shutdown, how long /readyz fails before the listener closes, so endpoints stop routing here first")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	return c, nil
}

// cellAccess is how the gateway finds and calls cells: the signing key, where servers come
// from, and the TLS to reach them with.
type cellAccess struct {
	key      []byte
	resolver gateway.Resolver
	tls      *tls.Config // nil: plain HTTP or system roots
}

// cellAccess checks the flags about cells and loads what they name.
func (c config) cellAccess() (cellAccess, error) {
	var a cellAccess
	if c.routingFile == "" {
		return a, errors.New("-routing-file is required")
	}
	if c.keyFile == "" {
		return a, errors.New("-signing-key-file is required")
	}
	key, err := signing.LoadKey(c.keyFile)
	if err != nil {
		return a, err
	}
	a.key = key
	switch c.endpoints {
	case "static":
		a.resolver = gateway.StaticResolver{}
	case "dns":
		if c.serverScheme != "http" && c.serverScheme != "https" {
			return a, fmt.Errorf("-server-scheme: %q, want http or https", c.serverScheme)
		}
		a.resolver = gateway.DNSResolver{Namespace: c.namespace, Port: c.serverPort, Scheme: c.serverScheme}
	default:
		return a, fmt.Errorf("-endpoints: %q, want static or dns", c.endpoints)
	}
	if c.serverCA != "" {
		pem, err := os.ReadFile(c.serverCA)
		if err != nil {
			return a, fmt.Errorf("-server-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return a, fmt.Errorf("-server-ca-file %s: no PEM certificate found", c.serverCA)
		}
		a.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return a, errors.New("-tls-cert-file and -tls-key-file go together")
	}
	return a, nil
}

// serve listens and serves handler until ctx ends, then drains: /readyz fails for the drain
// delay so endpoints stop routing here, and requests in flight finish.
func serve(ctx context.Context, cfg config, log *slog.Logger, handler http.Handler, gw *gateway.Gateway, listening func(addr string)) error {
	srv := &http.Server{
		Addr:              cfg.listen,
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.listen, err)
	}
	errc := make(chan error, 1)
	if cfg.tlsCert != "" {
		// TLS where traffic leaves the pod (docs/design.md §2, Security); the Secret is mounted.
		go func() { errc <- srv.ServeTLS(ln, cfg.tlsCert, cfg.tlsKey) }()
	} else {
		go func() { errc <- srv.Serve(ln) }()
	}
	listening(ln.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", cfg.listen, err)
	case <-ctx.Done():
	}
	gw.Drain()
	if cfg.drainDelay > 0 {
		log.Info("draining before shutdown", "delay", cfg.drainDelay)
		select {
		case <-time.After(cfg.drainDelay):
		case err := <-errc:
			return fmt.Errorf("serve %s: %w", cfg.listen, err)
		}
	}
	// Finish requests in flight: a dropped open would leave its caller unsure whether the money
	// moved (the cell's idempotency makes a retry safe, but a clean answer is better).
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("gateway stopped cleanly")
	return nil
}
