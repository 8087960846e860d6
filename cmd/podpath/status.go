package main

import (
	"cmp"
	"fmt"
	"io"
	stdmaps "maps"
	"slices"
	"strings"

	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/maps"
	"github.com/spf13/cobra"
)

// statusTopDrops is how many drop reasons status lists.
const statusTopDrops = 5

// summary is podpath status: the node on one screen.
type summary struct {
	Loaded      bool              `json:"loaded"`
	Kernel      string            `json:"kernel"`
	Features    []string          `json:"features"`
	Config      *loader.Config    `json:"config,omitempty"`
	Programs    int               `json:"programs"`
	Attached    map[string]int    `json:"attached"` // program -> attachments
	Maps        []mapFill         `json:"maps"`     // fullest first
	TopDrops    []counterRow      `json:"topDrops"`
	DropsTotal  uint64            `json:"dropsTotal"`
	Events      *maps.EventStats  `json:"events,omitempty"`
	EventConfig *maps.EventConfig `json:"eventConfig,omitempty"`
	Trace       *maps.Trace       `json:"trace,omitempty"` // nil: tracing off
	TraceStats  *maps.TraceStats  `json:"traceStats,omitempty"`
}

type mapFill struct {
	Name       string  `json:"name"`
	Entries    int     `json:"entries"`
	MaxEntries uint32  `json:"maxEntries"`
	Percent    float64 `json:"percent"`
}

func newStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "The node on one screen: what is loaded and attached, kernel features, map fill levels, top drop reasons",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			st, err := loader.ReadStatus(g.pinRoot, g.stateDir)
			if err != nil {
				return err
			}
			s := summarize(st, g.pinRoot)
			return g.render(s, func(w io.Writer) { printSummary(w, s, g.pinRoot) })
		},
	}
}

func summarize(st *loader.Status, root string) summary {
	f := st.Features
	s := summary{Loaded: st.Loaded, Kernel: f.Kernel, Config: st.Config, Programs: len(st.Programs), Attached: map[string]int{}}
	for name, on := range map[string]bool{"tcx": f.TCX, "redirect_peer": f.RedirectPeer, "redirect_neigh": f.RedirectNeigh,
		"lru_hash": f.LRUHash, "ringbuf": f.RingBuf, "netns_cookie": f.NetnsCookie, "overlay_encap": f.OverlayEncap, "fib_skip_neigh": f.FIBSkipNeigh} {
		if on {
			s.Features = append(s.Features, name)
		}
	}
	slices.Sort(s.Features)
	for _, a := range st.Attachments {
		s.Attached[a.Program]++
	}
	for _, m := range st.Maps {
		// Arrays are full by construction and a ring buffer has no entries.
		if m.MaxEntries == 0 || m.Type == "Array" || m.Type == "PerCPUArray" || m.Type == "RingBuf" {
			continue
		}
		s.Maps = append(s.Maps, mapFill{m.Name, m.Entries, m.MaxEntries, 100 * float64(m.Entries) / float64(m.MaxEntries)})
	}
	slices.SortStableFunc(s.Maps, func(a, b mapFill) int { return cmp.Compare(b.Percent, a.Percent) })
	if cs, err := maps.ReadPinnedCounters(root); err == nil {
		for _, c := range cs {
			if c.Reason.IsDrop() && c.Packets > 0 {
				s.TopDrops = append(s.TopDrops, counterRow{c.Hook.String(), c.Reason.String(), true, c.Packets, c.Bytes})
				s.DropsTotal += c.Packets
			}
		}
		slices.SortStableFunc(s.TopDrops, func(a, b counterRow) int { return cmp.Compare(b.Packets, a.Packets) })
		s.TopDrops = s.TopDrops[:min(len(s.TopDrops), statusTopDrops)]
	}
	if es, err := maps.ReadEventStats(root); err == nil {
		s.Events = &es
	}
	if ec, err := maps.ReadEventConfig(root); err == nil {
		s.EventConfig = &ec
		if t := maps.TraceOf(ec); t.On() {
			s.Trace = &t
		}
	}
	if ts, err := maps.ReadTraceStats(root); err == nil {
		s.TraceStats = &ts
	}
	return s
}

func printSummary(w io.Writer, s summary, root string) {
	fmt.Fprintf(w, "Kernel:\t%s (%s)\n", s.Kernel, strings.Join(s.Features, ", "))
	if !s.Loaded {
		fmt.Fprintf(w, "Datapath:\tnot loaded under %s (run `podpath node init`)\n", root)
		return
	}
	fmt.Fprintf(w, "Datapath:\tloaded under %s: %d programs\n", root, s.Programs)
	if c := s.Config; c != nil {
		routing := cmp.Or(c.Routing, loader.RoutingDirect)
		snat := "on"
		if c.NoSNAT {
			snat = "off"
		}
		fmt.Fprintf(w, "Node:\tpod CIDR %s, MTU %d, tc via %s, XDP %s, routing %s, SNAT %s, uplinks %s\n",
			c.PodCIDR, c.MTU, c.TCAttach, cmp.Or(c.XDPMode, "?"), routing, snat, cmp.Or(strings.Join(c.Uplinks, ", "), "none"))
	}
	var att []string
	for _, p := range slices.Sorted(stdmaps.Keys(s.Attached)) {
		att = append(att, fmt.Sprintf("%s x%d", p, s.Attached[p]))
	}
	fmt.Fprintf(w, "Attached:\t%s\n", cmp.Or(strings.Join(att, ", "), "nothing"))
	var fill []string
	for _, m := range s.Maps {
		if m.Entries == 0 {
			continue
		}
		fill = append(fill, fmt.Sprintf("%s %d/%d (%.1f%%)", m.Name, m.Entries, m.MaxEntries, m.Percent))
	}
	fmt.Fprintf(w, "Maps in use:\t%s\n", cmp.Or(strings.Join(fill, ", "), "all empty"))
	if len(s.TopDrops) == 0 {
		fmt.Fprintf(w, "Drops:\tnone\n")
	} else {
		fmt.Fprintf(w, "Drops:\t%d in all; most:\n", s.DropsTotal)
		for _, d := range s.TopDrops {
			fmt.Fprintf(w, "\t  %s at %s: %d packets\n", d.Reason, d.Hook, d.Packets)
		}
	}
	if s.EventConfig != nil && s.Events != nil {
		limit := fmt.Sprintf("%d/s per CPU, bursts of %d", s.EventConfig.DropRate, s.EventConfig.DropBurst)
		if s.EventConfig.DropRate == 0 {
			limit = "off"
		}
		fmt.Fprintf(w, "Drop events:\t%s; sent %d, rate-limited %d, lost to a full buffer %d (podpath monitor)\n",
			limit, s.Events.Sent, s.Events.RateLimited, s.Events.RingbufFull)
	}
	if s.TraceStats != nil {
		state := "off"
		if s.Trace != nil {
			state = fmt.Sprintf("on for %s, one packet in %d", describeTrace(*s.Trace), max(s.Trace.Sample, 1))
		}
		fmt.Fprintf(w, "Tracing:\t%s; sent %d, sampled out %d, lost to a full buffer %d (podpath monitor --trace)\n",
			state, s.TraceStats.Sent, s.TraceStats.SampledOut, s.TraceStats.RingbufFull)
	}
}
