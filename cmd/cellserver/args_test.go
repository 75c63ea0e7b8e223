package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/serverargs"
)

// The command line the operator and the local SET build (serverargs) is the one this server
// parses: every field arrives, and the optional ones left empty keep the defaults.
func TestServerArgsParse(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	full := serverargs.Args{
		Listen: "127.0.0.1:9", MySQLDSN: "u@tcp(127.0.0.1:3306)/", MySQLPasswordFile: pw,
		Memcached: "127.0.0.1:11", ReadyMemcached: true, RoutingFile: "/r/routing.json",
		Cell: "c-1", ServerName: "c-1-server-0", Slots: 500, Region: 2, ShardDatabases: 3, ShardTables: 4,
		ShardDBPrefix: "x_", CellSchema: "c_cell", ControlSchema: "c_control", WalletSchema: "c_wallet",
		QueueWorkers: 5, QueueDepth: 6, BatchMax: 7, GuardLimit: 8, Expiry: 90 * time.Minute,
		MaxTotalCents: 12345, MaxCount: 67, SigningKeyFile: "/k/key",
		MySQLInstances: []string{"127.0.0.1:3306", "127.0.0.1:3307"},
	}
	cfg, err := parseFlags(full.Flags())
	if err != nil {
		t.Fatalf("parse %v: %v", full.Flags(), err)
	}
	got := serverargs.Args{
		Listen: cfg.Listen, MySQLDSN: full.MySQLDSN, MySQLPasswordFile: pw,
		Memcached: cfg.Memcached, ReadyMemcached: cfg.ReadyMemcached, RoutingFile: cfg.RoutingFile,
		Cell: cfg.Cell, ServerName: cfg.ServerName, Slots: cfg.Slots, Region: cfg.Region,
		ShardDatabases: cfg.ShardDatabases, ShardTables: cfg.ShardTables,
		ShardDBPrefix: cfg.ShardDBPrefix, CellSchema: cfg.CellSchema, ControlSchema: cfg.ControlSchema, WalletSchema: cfg.WalletSchema,
		QueueWorkers: cfg.QueueWorkers, QueueDepth: cfg.QueueDepth, BatchMax: cfg.BatchMax, GuardLimit: cfg.GuardLimit,
		Expiry: cfg.Expiry, MaxTotalCents: cfg.MaxTotalCents, MaxCount: cfg.MaxCount, SigningKeyFile: cfg.SigningKeyFile,
		MySQLInstances: cfg.MySQLInstances,
	}
	if !reflect.DeepEqual(got, full) {
		t.Errorf("parsed\n%+v\nwant\n%+v", got, full)
	}
	if cfg.MySQLDSN == full.MySQLDSN {
		t.Errorf("the password file was not applied to the DSN")
	}

	bare := full
	bare.MySQLPasswordFile, bare.ShardDBPrefix, bare.CellSchema, bare.ControlSchema, bare.WalletSchema = "", "", "", "", ""
	bare.MySQLInstances = nil
	cfg, err = parseFlags(bare.Flags())
	if err != nil {
		t.Fatal(err)
	}
	def, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ShardDBPrefix != def.ShardDBPrefix || cfg.CellSchema != def.CellSchema || cfg.ControlSchema != def.ControlSchema || cfg.WalletSchema != def.WalletSchema {
		t.Errorf("empty optional fields changed the defaults: %+v", cfg)
	}
}
