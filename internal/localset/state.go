package localset

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/internal/dbfailover"
)

// Files under the data directory.
const (
	StateFile   = "state.json"
	RoutingFile = "routing.json"
	KeyFile     = "signing.key"
)

// stateVersion is bumped when the file's meaning changes incompatibly.
const stateVersion = 1

// State is what a data directory remembers between runs: the ports every component listens
// on (so URLs and DSNs stay valid across restarts) and what tools need to reach the SET
// (rpbench reads it to find the gateway and every cell's database).
type State struct {
	Version       int         `json:"version"`
	Set           string      `json:"set"`
	SlotCount     int         `json:"slotCount"`
	CreatedAt     time.Time   `json:"createdAt"`
	GatewayPort   int         `json:"gatewayPort"`
	Layout        LayoutState `json:"layout"`
	CellSchema    string      `json:"cellSchema"`
	ControlSchema string      `json:"controlSchema"`
	WalletSchema  string      `json:"walletSchema"`
	MaxCount      int         `json:"maxCount"`
	MaxTotalCents int64       `json:"maxTotalCents"`
	Cells         []CellState `json:"cells"`

	dir string // the data directory it was loaded from or saved to
}

// LayoutState is the shard layout the cells were created with.
type LayoutState struct {
	Databases   int    `json:"databases"`
	TablesPerDB int    `json:"tablesPerDatabase"`
	Prefix      string `json:"prefix"`
}

// Shard is the layout as cellserver/shard uses it.
func (l LayoutState) Shard() shard.Layout {
	return shard.Layout{Databases: l.Databases, TablesPerDB: l.TablesPerDB, DatabasePrefix: l.Prefix}
}

// CellState is one cell's ports and, when its database is replicated, the failover history.
type CellState struct {
	Name      string `json:"name"`
	MySQLPort int    `json:"mysqlPort"` // database instance 0
	// ReplicaPorts are database instances 1..N-1 (spec.template.mysql.replicas > 1).
	ReplicaPorts  []int `json:"replicaPorts,omitempty"`
	MemcachedPort int   `json:"memcachedPort"`
	ServerPorts   []int `json:"serverPorts"`
	// Database is the replicated database's primary terms and refused instances
	// (internal/dbfailover); nil for a single instance.
	Database *dbfailover.History `json:"database,omitempty"`
}

// MySQLPorts are every database instance's port, instance 0 first.
func (c CellState) MySQLPorts() []int { return append([]int{c.MySQLPort}, c.ReplicaPorts...) }

// PrimaryIndex is the database instance that is primary by the recorded history (0 for a
// single instance or before the first term).
func (c CellState) PrimaryIndex() int {
	if c.Database != nil {
		if t, ok := c.Database.Current(); ok && t.Primary >= 0 && t.Primary < len(c.MySQLPorts()) {
			return t.Primary
		}
	}
	return 0
}

// InstanceAddrs are host:port of every database instance.
func (c CellState) InstanceAddrs() []string {
	var out []string
	for _, p := range c.MySQLPorts() {
		out = append(out, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return out
}

// ErrNoState means the directory holds no local SET yet.
var ErrNoState = errors.New("no local SET state")

// LoadState reads dir/state.json.
func LoadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (start one with `localset up -data %s`)", dir, ErrNoState, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read local SET state: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, StateFile), err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("%s: state version %d, this tool understands %d", filepath.Join(dir, StateFile), s.Version, stateVersion)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s.dir = abs
	return &s, nil
}

// Save writes the state atomically (write a temp file, rename), so a crash mid-write never
// leaves a file that loses the ports of existing datadirs.
func (s *State) Save(dir string) error {
	s.Version = stateVersion
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp := filepath.Join(dir, StateFile+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, StateFile)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	s.dir = abs
	return nil
}

// Dir is the data directory of this state.
func (s *State) Dir() string { return s.dir }

// GatewayURL is the base URL clients use.
func (s *State) GatewayURL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.GatewayPort) }

// RoutingPath is the routing table file the servers and the gateway read.
func (s *State) RoutingPath() string { return filepath.Join(s.dir, RoutingFile) }

// Cell finds a cell by name.
func (s *State) Cell(name string) (*CellState, bool) {
	for i := range s.Cells {
		if s.Cells[i].Name == name {
			return &s.Cells[i], true
		}
	}
	return nil, false
}

// DSN is a go-sql-driver DSN for root on the cell's MariaDB (its primary, as last recorded),
// no default database, with the settings the cell server uses (parseTime, client-side
// interpolation).
func (c CellState) DSN() string { return c.dsnFor("root", c.MySQLPorts()[c.PrimaryIndex()]) }

// AppUser is the cell servers' database user on a replicated cell: without READ ONLY ADMIN,
// so a fenced instance refuses its writes (dbfailover.AppGrants).
const AppUser = "rp_app"

func (c CellState) dsnFor(user string, port int) string {
	cfg := mysql.NewConfig()
	cfg.User = user
	cfg.Net = "tcp"
	cfg.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.ParseTime = true
	cfg.InterpolateParams = true
	cfg.Loc = time.UTC
	cfg.Timeout = 5 * time.Second
	return cfg.FormatDSN()
}

// ServerURLs are the base URLs of the cell's servers.
func (c CellState) ServerURLs() []string {
	out := make([]string, len(c.ServerPorts))
	for i, p := range c.ServerPorts {
		out[i] = fmt.Sprintf("http://127.0.0.1:%d", p)
	}
	return out
}

// CellNeed is how many servers a cell runs now.
type CellNeed struct {
	Name    string
	Servers int
}

// AssignPorts returns the state for this run: every cell and server that had a port keeps it,
// new ones get fresh ports from free that collide with nothing recorded. Cells that are no
// longer needed stay in the state (their datadir still holds data, and a later run that needs
// them again must find the same port). prev may be nil. The result's Cells follow need's order,
// then the cells only prev knows.
func AssignPorts(prev *State, need []CellNeed, free func() (int, error)) (*State, error) {
	next := &State{}
	used := map[int]bool{}
	if prev != nil {
		*next = *prev
		next.Cells = nil
		for _, c := range prev.Cells {
			used[c.MySQLPort], used[c.MemcachedPort] = true, true
			for _, p := range append(slices.Clone(c.ReplicaPorts), c.ServerPorts...) {
				used[p] = true
			}
		}
		used[prev.GatewayPort] = true
	}
	delete(used, 0)
	fresh := func() (int, error) {
		for range 1000 {
			p, err := free()
			if err != nil {
				return 0, err
			}
			if p > 0 && !used[p] {
				used[p] = true
				return p, nil
			}
		}
		return 0, errors.New("assign ports: no free port that is not already recorded")
	}
	var err error
	if next.GatewayPort == 0 {
		if next.GatewayPort, err = fresh(); err != nil {
			return nil, err
		}
	}
	old := map[string]CellState{}
	if prev != nil {
		for _, c := range prev.Cells {
			old[c.Name] = c
		}
	}
	for _, n := range need {
		c, ok := old[n.Name]
		if !ok {
			c = CellState{Name: n.Name}
		}
		c.ServerPorts = slices.Clone(c.ServerPorts)
		delete(old, n.Name)
		if c.MySQLPort == 0 {
			if c.MySQLPort, err = fresh(); err != nil {
				return nil, err
			}
		}
		if c.MemcachedPort == 0 {
			if c.MemcachedPort, err = fresh(); err != nil {
				return nil, err
			}
		}
		for len(c.ServerPorts) < n.Servers {
			p, err := fresh()
			if err != nil {
				return nil, err
			}
			c.ServerPorts = append(c.ServerPorts, p)
		}
		next.Cells = append(next.Cells, c)
	}
	if prev != nil {
		for _, c := range prev.Cells {
			if _, left := old[c.Name]; left {
				next.Cells = append(next.Cells, c)
			}
		}
	}
	return next, nil
}

// AssignReplicaPorts gives cell's database instances 1..instances-1 ports that collide with
// nothing recorded in st; instances that had one keep it.
func AssignReplicaPorts(st *State, cell string, instances int, free func() (int, error)) error {
	c, ok := st.Cell(cell)
	if !ok {
		return fmt.Errorf("assign replica ports: no cell %s", cell)
	}
	used := map[int]bool{st.GatewayPort: true}
	for _, o := range st.Cells {
		for _, p := range append(append(o.MySQLPorts(), o.MemcachedPort), o.ServerPorts...) {
			used[p] = true
		}
	}
	for tries := 0; len(c.ReplicaPorts) < instances-1; tries++ {
		if tries > 1000 {
			return errors.New("assign replica ports: no free port that is not already recorded")
		}
		p, err := free()
		if err != nil {
			return err
		}
		if p > 0 && !used[p] {
			used[p] = true
			c.ReplicaPorts = append(c.ReplicaPorts, p)
		}
	}
	return nil
}
