package controllers

import (
	"context"
	"database/sql"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/store"
)

// unsettledBefore counts a cell's unsettled packets created before boundary (an ID), in the
// cell schema the operator configures its servers with.
func unsettledBefore(ctx context.Context, db *sql.DB, boundary int64) (int64, error) {
	return store.UnsettledBefore(ctx, db, store.DefaultCellSchema, boundary)
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
	packets, effects, err := store.Owed(ctx, db, store.DefaultCellSchema)
	switch {
	case err != nil:
		return fmt.Sprintf("cannot check for unsettled packets: %v", err)
	case packets > 0 || effects > 0:
		return fmt.Sprintf("%d unsettled packets, %d undelivered wallet effects", packets, effects)
	}
	return ""
}
