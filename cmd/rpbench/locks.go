package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redpacketset/redpacket/internal/lockbench"
)

// locks runs the lock-strategy comparison and writes the markdown table and the PNG chart.
func locks(args []string) error {
	fs := flag.NewFlagSet("rpbench locks", flag.ContinueOnError)
	levels := fs.String("levels", "8,32,128,256", "concurrent openers, comma-separated")
	duration := fs.Duration("duration", 5*time.Second, "run time per strategy and level")
	out := fs.String("out", "docs/lock-strategies.md", "markdown report")
	png := fs.String("png", "docs/lock-strategies.png", "chart of opens/s vs concurrency")
	summary := fs.String("summary", "docs/benchmarks.md", "document whose marked section gets the chart and tables (empty: none)")
	binlog := fs.Bool("binlog", false, "MariaDB with log-bin and sync_binlog=1 (a primary with replicas)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ls []int
	for _, f := range strings.Split(*levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-levels: %q is not a positive number", f)
		}
		ls = append(ls, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fmt.Fprintf(os.Stderr, "rpbench locks: %d strategies × levels %v × %s on a private durable MariaDB\n", len(lockbench.Strategies), ls, *duration)
	points, machine, err := lockbench.Run(ctx, lockbench.Config{Levels: ls, Duration: *duration, BinLog: *binlog, Log: log,
		Progress: func(p lockbench.Point) {
			fmt.Fprintf(os.Stderr, "  %-10s %4d callers %10.0f opens/s  failed %-7d p50 %-9s p99 %-9s cpu %3.0f%%\n",
				p.Strategy, p.Callers, p.OpensPerSec, p.Failed, p.P50.Round(10*time.Microsecond), p.P99.Round(10*time.Microsecond), p.CPU*100)
		}})
	if err != nil {
		return err
	}
	var md bytes.Buffer
	rel, err := filepath.Rel(filepath.Dir(*out), *png)
	if err != nil {
		rel = *png
	}
	if err := lockbench.WriteMarkdown(&md, points, machine, rel, *duration); err != nil {
		return err
	}
	if err := os.WriteFile(*out, md.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	if err := lockbench.WritePNG(*png, points, machine); err != nil {
		return fmt.Errorf("write %s: %w", *png, err)
	}
	if *summary != "" {
		if err := updateSummary(*summary, *out, *png, points, machine); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "rpbench locks: wrote %s and %s\n", *out, *png)
	return nil
}

// updateSummary rewrites the generated section of the benchmarks document, so the comparison
// shows up where readers look for benchmark figures, with links relative to that document.
func updateSummary(path, report, png string, points []lockbench.Point, m lockbench.Machine) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	rel := func(target string) string {
		if r, err := filepath.Rel(filepath.Dir(path), target); err == nil {
			return r
		}
		return target
	}
	var section bytes.Buffer
	if err := lockbench.WriteSummary(&section, points, m, rel(png), rel(report)); err != nil {
		return err
	}
	updated, err := lockbench.ReplaceSection(string(doc), section.String())
	if err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(updated), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
