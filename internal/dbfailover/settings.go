package dbfailover

import "strconv"

// SemiSyncTimeoutMillis is rpl_semi_sync_master_timeout: about 49 days, so a primary never
// falls back to asynchronous replication on its own while it waits for a replica. Turning the
// wait off is a decision of this package (Decide: no replica can replicate), made visibly.
const SemiSyncTimeoutMillis = 4294967295

// InstanceFlags are the mariadbd options every instance of a replicated cell runs with, on top
// of the durable ones (innodb_flush_log_at_trx_commit=1, sync_binlog=1, a binary log with
// server_id set): the settings docs/reliability.md's guarantee rests on.
//
//   - read_only at every start: an instance takes writes only once Manager has opened it, so
//     a crashed primary that restarts can never take a write behind a new primary's back;
//   - GTID strict mode and log_slave_updates: replicas' binlogs carry what they applied, which
//     Errant judges, and out-of-order GTIDs stop replication instead of diverging quietly;
//   - semi-sync replica side on everywhere, primary side off (Manager turns it on for the
//     primary only: on a replica it would hold its own SQL thread waiting for acks);
//   - wait point AFTER_SYNC: a commit becomes visible and is acknowledged only after a
//     replica has it, so no reader ever sees a transaction that a failover could lose;
//   - relay_log_recovery: a crashed replica refetches its relay log rather than trust it.
func InstanceFlags() []string {
	return []string{
		"--read-only=ON",
		"--gtid-strict-mode=ON",
		"--log-slave-updates=ON",
		"--rpl-semi-sync-slave-enabled=ON",
		"--rpl-semi-sync-master-enabled=OFF",
		"--rpl-semi-sync-master-wait-point=AFTER_SYNC",
		"--rpl-semi-sync-master-timeout=" + strconv.Itoa(SemiSyncTimeoutMillis),
		"--rpl-semi-sync-master-wait-no-slave=ON",
		"--relay-log-recovery=ON",
		"--slave-net-timeout=10",
	}
}

// AppGrants are the privileges of the cell servers' user: everything the data plane does
// (DDL of its day tables included) and nothing that passes read_only (READ ONLY ADMIN, SUPER)
// or changes replication — so a fenced instance really refuses their writes.
const AppGrants = "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, REFERENCES, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, PROCESS"
