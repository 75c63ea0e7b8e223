package plugin

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"
)

// Formats -o accepts; "" is the table.
var Formats = []string{"", "table", "json", "yaml"}

// CheckFormat refuses an -o value Print cannot write.
func CheckFormat(format string) error {
	for _, f := range Formats {
		if f == format {
			return nil
		}
	}
	return fmt.Errorf("%w: -o %q: want json, yaml or table", ErrBadInput, format)
}

// Print writes v (a *SetStatus, *MaskResult or *AuditResult) as a table, JSON or YAML.
func Print(w io.Writer, format string, v any, now time.Time) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("yaml: %w", err)
		}
		_, err = w.Write(b)
		return err
	case "", "table":
	default:
		return fmt.Errorf("%w: -o %q: want json, yaml or table", ErrBadInput, format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch r := v.(type) {
	case *SetStatus:
		printStatus(tw, r, now)
	case *MaskResult:
		printMask(tw, r)
	case *AuditResult:
		printAudit(tw, r)
	case *SwitchoverResult:
		fmt.Fprintln(tw, "CELL\tFROM\tTO\tTERM")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", r.Cell, r.From, r.To, r.Term)
	default:
		return fmt.Errorf("no table for %T", v)
	}
	return tw.Flush()
}

func dash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

// age is a kubectl-style age: 45s, 12m, 3h, 2d.
func age(since, now time.Time) string {
	d := now.Sub(since)
	switch {
	case d < 0:
		return "in " + age(now, since)
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func printStatus(w io.Writer, s *SetStatus, now time.Time) {
	fmt.Fprintf(w, "SET %s/%s\n\n", s.Namespace, s.Name)
	fmt.Fprintln(w, "CELL\tSLOTS\tSERVERS\tREADY\tAVAILABLE\tDRAINING\tEPOCH HELD (server=epoch)")
	for _, c := range s.Cells {
		var held []string
		for _, r := range c.Reported {
			held = append(held, fmt.Sprintf("%s=%d", r.Server, r.Epoch))
		}
		h := dash(held)
		if c.DatabaseError != "" {
			h = "database unreadable: " + c.DatabaseError
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%t\t%s\n", c.Name, c.Slots, c.Servers, c.ReadyServers, c.Available, c.Draining, h)
	}
	fmt.Fprintln(w, "\nEPOCH\tEFFECTIVE\tSTATE\tHELD BY\tNOT HELD BY")
	for _, e := range s.Epochs {
		fmt.Fprintf(w, "%d\t%s (%s)\t%s\t%s\t%s\n", e.Number, e.EffectiveTime.Format(time.RFC3339), age(e.EffectiveTime, now), e.State, dash(e.HeldBy), dash(e.NotHeldBy))
	}
	fmt.Fprintln(w, "\nMASKED CELL\tSLOTS\tTABLE\tSOURCE\tSINCE\tREASON")
	if len(s.Masks) == 0 {
		fmt.Fprintln(w, "(none)\t\t\t\t\t")
	}
	for _, m := range s.Masks {
		src := m.Source
		if src == "" {
			src = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s (%s)\t%s\n", m.Cell, m.Slots, m.Table, src, m.Since.Format(time.RFC3339), age(m.Since, now), m.Reason)
	}
	fmt.Fprintln(w, "\nTABLE ERRORS CELL\tTABLE\tERRORS\tCALLS")
	n := 0
	for _, c := range s.Cells {
		for _, t := range c.TableErrors {
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\n", c.Name, t.Table, t.Errors, t.Calls)
			n++
		}
	}
	if n == 0 {
		fmt.Fprintln(w, "(none)\t\t\t")
	}
	fmt.Fprintln(w, "\nCONDITION\tSTATUS\tREASON\tMESSAGE")
	for _, c := range s.Conditions {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, c.Message)
	}
}

func printMask(w io.Writer, r *MaskResult) {
	fmt.Fprintln(w, "CELL\tTABLE\tADDED\tLIFTED\tALREADY\tOPERATOR MASKS")
	t := r.Table
	if t == "" {
		t = "-"
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Cell, t, dash(r.Added), dash(r.Lifted), dash(r.Already), dash(r.OperatorMasks))
}

func printAudit(w io.Writer, r *AuditResult) {
	verdict := "OK"
	if !r.OK {
		verdict = fmt.Sprintf("%d VIOLATIONS", len(r.Violations))
	}
	fmt.Fprintf(w, "AUDIT %s: %s\n\n", r.Set, verdict)
	fmt.Fprintln(w, "CELL\tPACKETS\tRECEIPTS\tOUTBOX DRAINED IN")
	for _, c := range r.Cells {
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\n", c.Name, c.Packets, c.Receipts, c.DrainedIn.Round(time.Millisecond))
	}
	for _, v := range r.Violations {
		fmt.Fprintf(w, "VIOLATION\t%s\n", v)
	}
}
