// Package serverargs owns the cell server's command line as its launchers write it: the
// operator's server Deployment (controllers) and the local SET (internal/localset) both build
// it here, so they cannot drift apart. cmd/cellserver parses these flags; its tests parse what
// Flags writes.
//
// It must never read files, the environment or the API: a launcher passes values, and empty
// optional fields leave the server's defaults in force.
package serverargs

import (
	"strconv"
	"strings"
	"time"
)

// Args are the flags a launcher passes to a cell server.
type Args struct {
	Listen   string
	MySQLDSN string
	// MySQLPasswordFile keeps the password out of argv (a mounted Secret); "" omits it.
	MySQLPasswordFile string
	// MySQLInstances lists every database instance of a replicated cell (host:port); the
	// server writes only to the writable one (cellserver/primarydb). Empty: MySQLDSN's alone.
	MySQLInstances []string
	Memcached      string
	// ReadyMemcached makes readiness include the memcached beside the server (in a pod it is
	// on the pod's loopback, which no kubelet probe reaches).
	ReadyMemcached bool
	RoutingFile    string
	Cell           string
	ServerName     string
	Slots          int
	Region         int
	ShardDatabases int
	ShardTables    int
	// The schema and prefix names; "" leaves the server's default (store.DefaultCellSchema,
	// control.DefaultSchema, wallet.DefaultSchema, "db_"), which is what the operator relies on.
	ShardDBPrefix  string
	CellSchema     string
	ControlSchema  string
	WalletSchema   string
	QueueWorkers   int
	QueueDepth     int
	BatchMax       int
	GuardLimit     int
	Expiry         time.Duration
	MaxTotalCents  int64
	MaxCount       int
	SigningKeyFile string
}

// Flags is the command line, in a fixed order so a Deployment's pod template is stable.
func (a Args) Flags() []string {
	out := []string{"-listen=" + a.Listen, "-mysql-dsn=" + a.MySQLDSN}
	out = optional(out, "mysql-password-file", a.MySQLPasswordFile)
	if len(a.MySQLInstances) > 0 {
		out = append(out, "-mysql-instances="+strings.Join(a.MySQLInstances, ","))
	}
	out = append(out, "-memcached="+a.Memcached)
	if a.ReadyMemcached {
		out = append(out, "-ready-memcached")
	}
	out = append(out,
		"-routing-file="+a.RoutingFile,
		"-cell="+a.Cell,
		"-server-name="+a.ServerName,
		"-slots="+strconv.Itoa(a.Slots),
		"-region="+strconv.Itoa(a.Region),
		"-shard-databases="+strconv.Itoa(a.ShardDatabases),
		"-shard-tables="+strconv.Itoa(a.ShardTables))
	out = optional(out, "shard-db-prefix", a.ShardDBPrefix)
	out = optional(out, "cell-schema", a.CellSchema)
	out = optional(out, "control-schema", a.ControlSchema)
	out = optional(out, "wallet-schema", a.WalletSchema)
	return append(out,
		"-queue-workers="+strconv.Itoa(a.QueueWorkers),
		"-queue-depth="+strconv.Itoa(a.QueueDepth),
		"-batch-max="+strconv.Itoa(a.BatchMax),
		"-guard-limit="+strconv.Itoa(a.GuardLimit),
		"-expiry="+a.Expiry.String(),
		"-max-total-cents="+strconv.FormatInt(a.MaxTotalCents, 10),
		"-max-count="+strconv.Itoa(a.MaxCount),
		"-signing-key-file="+a.SigningKeyFile)
}

func optional(out []string, name, v string) []string {
	if v == "" {
		return out
	}
	return append(out, "-"+name+"="+v)
}
