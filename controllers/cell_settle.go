package controllers

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/go-sql-driver/mysql"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// cellSchema is the cell server's per-cell schema (its -cell-schema default): the expiry
// index holds every packet not yet settled, the outbox every effect not yet delivered.
const cellSchema = "rp_cell"

// unsettledWork counts what a cell still owes: packets the expiry sweeper has not settled and
// outbox rows (wallet credits, refunds) not yet delivered. A cell with either is never deleted.
func unsettledWork(ctx context.Context, db *sql.DB) (packets, effects int64, err error) {
	count := func(q string) (int64, error) {
		var n int64
		err := db.QueryRowContext(ctx, q).Scan(&n)
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1049 || me.Number == 1146) {
			return 0, nil // no schema or table: the cell never stored a packet
		}
		return n, err
	}
	if packets, err = count("SELECT COUNT(*) FROM " + cellSchema + ".expiry"); err != nil {
		return 0, 0, fmt.Errorf("count unsettled packets: %w", err)
	}
	if effects, err = count("SELECT COUNT(*) FROM " + cellSchema + ".outbox WHERE delivered = 0"); err != nil {
		return 0, 0, fmt.Errorf("count undelivered outbox rows: %w", err)
	}
	return packets, effects, nil
}

// unsettledBefore counts unsettled packets whose ID is below boundary, i.e. created earlier.
func unsettledBefore(ctx context.Context, db *sql.DB, boundary int64) (int64, error) {
	var n int64
	err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+cellSchema+".expiry WHERE packet_id < ?", boundary).Scan(&n)
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1049 || me.Number == 1146) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("count unsettled packets before %d: %w", boundary, err)
	}
	return n, nil
}

// forCell opens (or reuses) a cell's pool with the credentials in its Secret.
func (c *cellDBs) forCell(ctx context.Context, k8s client.Reader, cell *rpv1.RedPacketCell) (*sql.DB, error) {
	creds := &corev1.Secret{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.MySQLSecretName()}, creds); err != nil {
		return nil, fmt.Errorf("read credentials of cell %s: %w", cell.Name, err)
	}
	return c.get(ctx, cell, creds)
}

// cellHold says why a cell that no routing epoch names must stay ("" when it may go).
func cellHold(ctx context.Context, k8s client.Reader, dbs *cellDBs, cell *rpv1.RedPacketCell) string {
	ctx, cancel := dbs.bound(ctx)
	defer cancel()
	db, err := dbs.forCell(ctx, k8s, cell)
	if err != nil {
		return fmt.Sprintf("cannot reach its database to check for unsettled packets: %v", err)
	}
	packets, effects, err := unsettledWork(ctx, db)
	switch {
	case err != nil:
		return fmt.Sprintf("cannot check for unsettled packets: %v", err)
	case packets > 0 || effects > 0:
		return fmt.Sprintf("%d unsettled packets, %d undelivered wallet effects", packets, effects)
	}
	return ""
}
