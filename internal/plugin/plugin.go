// Package plugin is the logic of `kubectl redpacket` (cmd/kubectl-redpacket): reading a set's
// state from its objects and its cells' control schemas, editing manual masks, draining a
// cell of new packets, and auditing every cell's database (docs/operator.md, kubectl plugin).
//
// The cells' databases are reached as the operator reaches them: with the credentials in each
// cell's Secret, at the cell's primary (or an address given per cell, e.g. a port-forward).
package plugin

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/shard"
)

// mysqlPort is the cells' MySQL port (controllers.MySQLPort).
const mysqlPort = 3306

// Plugin runs the commands against one namespace.
type Plugin struct {
	K8s       client.Client
	Namespace string
	// DBAddr maps a cell name to the host:port of its database; cells not listed are
	// reached at their primary pod's DNS name (the replicated cell's current primary, from its
	// status), which works only inside the cluster.
	DBAddr map[string]string
	// ControlSchema and CellSchema are the cells' schemas (the servers' defaults when empty).
	ControlSchema, CellSchema, WalletSchema string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

func (p *Plugin) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Plugin) controlSchema() string { return orDefault(p.ControlSchema, control.DefaultSchema) }

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (p *Plugin) getSet(ctx context.Context, name string) (*rpv1.RedPacketSet, error) {
	set := &rpv1.RedPacketSet{}
	if err := p.K8s.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: name}, set); err != nil {
		return nil, fmt.Errorf("get redpacketset %s/%s: %w", p.Namespace, name, err)
	}
	return set, nil
}

func (p *Plugin) getCell(ctx context.Context, name string) (*rpv1.RedPacketCell, error) {
	cell := &rpv1.RedPacketCell{}
	if err := p.K8s.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: name}, cell); err != nil {
		return nil, fmt.Errorf("get redpacketcell %s/%s: %w", p.Namespace, name, err)
	}
	return cell, nil
}

func (p *Plugin) listCells(ctx context.Context, set string) ([]rpv1.RedPacketCell, error) {
	l := &rpv1.RedPacketCellList{}
	if err := p.K8s.List(ctx, l, client.InNamespace(p.Namespace), client.MatchingLabels{rpv1.LabelSet: set}); err != nil {
		return nil, fmt.Errorf("list cells of %s/%s: %w", p.Namespace, set, err)
	}
	return l.Items, nil
}

// cellDSN is the DSN of a cell's database with the credentials of its Secret.
func (p *Plugin) cellDSN(ctx context.Context, cell *rpv1.RedPacketCell) (string, error) {
	creds := &corev1.Secret{}
	if err := p.K8s.Get(ctx, types.NamespacedName{Namespace: cell.Namespace, Name: cell.MySQLSecretName()}, creds); err != nil {
		return "", fmt.Errorf("read credentials of cell %s: %w", cell.Name, err)
	}
	cfg := mysql.NewConfig()
	cfg.User = string(creds.Data["user"])
	cfg.Passwd = string(creds.Data["password"])
	if cfg.User == "" {
		return "", fmt.Errorf("credentials Secret %s of cell %s has no user", cell.MySQLSecretName(), cell.Name)
	}
	cfg.Net = "tcp"
	cfg.Addr = p.DBAddr[cell.Name]
	if cfg.Addr == "" {
		cfg.Addr = fmt.Sprintf("%s:%d", cell.MySQLPrimaryHost(), mysqlPort)
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	cfg.Timeout = 5 * time.Second
	cfg.ReadTimeout = 30 * time.Second
	return cfg.FormatDSN(), nil
}

func (p *Plugin) openCellDB(ctx context.Context, cell *rpv1.RedPacketCell) (*sql.DB, error) {
	dsn, err := p.cellDSN(ctx, cell)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database of cell %s: %w", cell.Name, err)
	}
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("reach database of cell %s: %w", cell.Name, err)
	}
	return db, nil
}

// layoutOf is the cell's shard layout (its servers' -shard-* flags come from the same spec).
func layoutOf(t rpv1.CellTemplate) shard.Layout {
	l := shard.Layout{Databases: int(t.Shards.Databases), TablesPerDB: int(t.Shards.TablesPerDatabase), DatabasePrefix: "db_"}
	if l.Databases == 0 {
		l.Databases = shard.Default.Databases
	}
	if l.TablesPerDB == 0 {
		l.TablesPerDB = shard.Default.TablesPerDB
	}
	return l
}

// Scheme knows the built-in types and this project's API.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("scheme: %w", err)
	}
	if err := rpv1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("scheme: %w", err)
	}
	return s, nil
}
