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
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	var (
		listen        = fs.String("listen", ":8080", "address to serve the API, /healthz, /readyz and /metrics on")
		routingFile   = fs.String("routing-file", "", "routing table file (routing.json); required")
		keyFile       = fs.String("signing-key-file", "", "file holding the key that signs calls to cells (≥ 32 bytes); required")
		endpoints     = fs.String("endpoints", "static", "where cell servers come from: static (the routing table's endpoints) or dns (the cell's headless Service)")
		namespace     = fs.String("namespace", os.Getenv("POD_NAMESPACE"), "namespace of the cells' Services (dns endpoints)")
		serverPort    = fs.Int("server-port", 8080, "cell server port (dns endpoints; 0 reads SRV records)")
		region        = fs.Int("region", 0, "region this gateway serves; packets of other regions are refused with 421")
		probeInterval = fs.Duration("probe-interval", time.Second, "how often cell servers' /readyz are probed")
		probeFailures = fs.Int("probe-failures", 3, "unanswered probes in a row that take a ready server out of rotation (one \"not ready\" answer does at once)")
		watchInterval = fs.Duration("routing-interval", time.Second, "how often the routing file is checked for changes")
		upstream      = fs.Duration("upstream-timeout", 10*time.Second, "timeout of one call to a cell")
		logLevel      = fs.String("log-level", "info", "debug, info, warn or error")
		serverScheme  = fs.String("server-scheme", "http", "scheme of cell servers found by dns endpoints: http or https")
		serverCA      = fs.String("server-ca-file", "", "PEM CA bundle that signs cell servers' certificates (https cells); empty: system roots")
		tlsCert       = fs.String("tls-cert-file", "", "PEM certificate to serve HTTPS with (with -tls-key-file); empty: plain HTTP")
		tlsKey        = fs.String("tls-key-file", "", "PEM private key for -tls-cert-file")
		drainDelay    = fs.Duration("drain-delay", 5*time.Second, "on shutdown, how long /readyz fails before the listener closes, so endpoints stop routing here first")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	if *routingFile == "" {
		return errors.New("-routing-file is required")
	}
	if *keyFile == "" {
		return errors.New("-signing-key-file is required")
	}
	key, err := signing.LoadKey(*keyFile)
	if err != nil {
		return err
	}
	var resolver gateway.Resolver
	switch *endpoints {
	case "static":
		resolver = gateway.StaticResolver{}
	case "dns":
		if *serverScheme != "http" && *serverScheme != "https" {
			return fmt.Errorf("-server-scheme: %q, want http or https", *serverScheme)
		}
		resolver = gateway.DNSResolver{Namespace: *namespace, Port: *serverPort, Scheme: *serverScheme}
	default:
		return fmt.Errorf("-endpoints: %q, want static or dns", *endpoints)
	}
	var clientTLS *tls.Config
	if *serverCA != "" {
		pem, err := os.ReadFile(*serverCA)
		if err != nil {
			return fmt.Errorf("-server-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-server-ca-file %s: no PEM certificate found", *serverCA)
		}
		clientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("-tls-cert-file and -tls-key-file go together")
	}

	watcher, err := routing.NewWatcher(*routingFile, *watchInterval, log)
	if err != nil {
		return err
	}
	// The Go and process collectors come from the default registry: the collectors package
	// would link database/sql (its DB stats collector) into a binary that has no database.
	reg := prometheus.NewRegistry()
	gatherer := prometheus.Gatherers{prometheus.DefaultGatherer, reg}
	gw, err := gateway.New(gateway.Config{
		Routing:         watcher,
		Signer:          signing.NewSigner(key),
		Resolver:        resolver,
		Registerer:      reg,
		Log:             log,
		ProbeInterval:   *probeInterval,
		ProbeFailures:   *probeFailures,
		UpstreamTimeout: *upstream,
		Region:          *region,
		TLS:             clientTLS,
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
	srv := &http.Server{
		Addr:              *listen,
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	errc := make(chan error, 1)
	if *tlsCert != "" {
		// TLS where traffic leaves the pod (docs/design.md §2, Security); the Secret is mounted.
		go func() { errc <- srv.ServeTLS(ln, *tlsCert, *tlsKey) }()
	} else {
		go func() { errc <- srv.Serve(ln) }()
	}
	if listening != nil {
		listening(ln.Addr().String())
	}
	log.Info("gateway listening", "addr", ln.Addr().String(), "routing_file", *routingFile, "endpoints", *endpoints, "epoch", watcher.LoadedEpoch())

	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", *listen, err)
	case <-ctx.Done():
	}
	gw.Drain()
	if *drainDelay > 0 {
		log.Info("draining before shutdown", "delay", *drainDelay)
		select {
		case <-time.After(*drainDelay):
		case err := <-errc:
			return fmt.Errorf("serve %s: %w", *listen, err)
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
