package lockbench

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReportTableAndChart(t *testing.T) {
	var points []Point
	for i, s := range Strategies {
		for _, n := range []int{8, 256} {
			points = append(points, Point{Strategy: s.Key, Callers: n, OpensPerSec: float64((i + 1) * n * 10), P50: time.Millisecond, P99: 3 * time.Millisecond})
		}
	}
	points[2].OpensPerSec = 0 // an all-failing point must not break the log-scale chart
	m := Machine{CPUs: 2, CPUModel: "test cpu", MariaDB: "10.11.19-MariaDB", Started: time.Unix(0, 0).UTC(), LoadBefore: "1 2 3", Durability: "durable"}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, points, m, "chart.png", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"![opens/s vs concurrent openers](chart.png)",
		"| 8 callers | 256 callers |",
		"| FIFO queue + group commit (≤128 opens per tx) | 320 | 10,240 |",
		"| FIFO queue + group commit (≤128 opens per tx) | 4.0× | 4.0× |",
		"| optimistic | 8 | 0 |",
		"load average before the run: 1 2 3",
		"[benchmarks.md](benchmarks.md)",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	path := filepath.Join(t.TempDir(), "chart.png")
	if err := WritePNG(path, points, m); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 600 || b.Dy() < 300 {
		t.Errorf("chart is %v", b)
	}
}

// TestRunMeasuresEveryStrategy runs the real comparison briefly on a private MariaDB: every
// strategy opens the hot packet, and naive and queued opens never fail.
func TestRunMeasuresEveryStrategy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts MariaDB")
	}
	points, m, err := Run(context.Background(), Config{Levels: []int{4}, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != len(Strategies) || !strings.HasPrefix(m.MariaDB, "10.") {
		t.Fatalf("points %+v, MariaDB %q", points, m.MariaDB)
	}
	for _, p := range points {
		if p.Opens == 0 && p.Strategy != "optimistic" {
			t.Errorf("%s: no open in 300ms", p.Strategy)
		}
		if p.Failed != 0 && p.Strategy != "optimistic" {
			t.Errorf("%s: %d failed opens", p.Strategy, p.Failed)
		}
	}
}
