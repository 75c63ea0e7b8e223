package cpustat

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat's CPU times; 100 on every Linux ABI Go
// supports.
const clockTick = 10 * time.Millisecond

// ProcCPU is the user plus system CPU time process pid has used so far.
func ProcCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: count from after it.
	end := bytes.LastIndexByte(raw, ')')
	if end < 0 {
		return 0, fmt.Errorf("cpu of process %d: malformed stat", pid)
	}
	fields := strings.Fields(string(raw[end+1:]))
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return 0, fmt.Errorf("cpu of process %d: stat has %d fields", pid, len(fields))
	}
	utime, err1 := strconv.ParseUint(fields[11], 10, 64)
	stime, err2 := strconv.ParseUint(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cpu of process %d: bad utime/stime %q %q", pid, fields[11], fields[12])
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// FindProcs lists the processes whose command line (arguments joined by spaces) contains
// any of the needles, by needle. Processes that end while it reads are skipped.
func FindProcs(needles []string) map[string][]int {
	out := map[string][]int{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		cmd := " " + strings.ReplaceAll(strings.TrimRight(string(raw), "\x00"), "\x00", " ") + " "
		for _, n := range needles {
			if strings.Contains(cmd, " "+n+" ") {
				out[n] = append(out[n], pid)
			}
		}
	}
	return out
}

// Group sums the CPU time of named groups of processes, so a load tool can say what each
// component cost: sample before and after, and subtract.
type Group map[string][]int

// Sample reads each group's total CPU time; a process that has exited counts as zero.
func (g Group) Sample() map[string]time.Duration {
	out := make(map[string]time.Duration, len(g))
	for name, pids := range g {
		var sum time.Duration
		for _, pid := range pids {
			if d, err := ProcCPU(pid); err == nil {
				sum += d
			}
		}
		out[name] = sum
	}
	return out
}
