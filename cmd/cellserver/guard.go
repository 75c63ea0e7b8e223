package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/redpacketset/redpacket/cellserver/guard"
	"github.com/redpacketset/redpacket/cellserver/packet"
	"github.com/redpacketset/redpacket/cellserver/queue"
)

// newGuard builds the overflow guard, which is also the cache grab reads (packet state and
// opened markers). With -memcached empty it runs on local counts only and grab asks the DB.
// ping asks the memcached beside the server whether it answers (readiness with -ready-memcached).
func newGuard(cfg Config, reg prometheus.Registerer, log *slog.Logger) (_ queue.Guard, _ packet.GrabCache, ping func() error, closeGuard func(), _ error) {
	g, err := guard.New(guard.Config{Addr: cfg.Memcached, Limit: cfg.GuardLimit, KeyPrefix: "rp:" + cfg.Cell + ":", Registerer: reg, Logger: log})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return g, g, g.Ping, func() {}, nil
}
