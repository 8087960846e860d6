package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/podpath/podpath/services"
	"github.com/spf13/cobra"
)

// ctFilterFlags are the conntrack selection flags.
type ctFilterFlags struct {
	service, backend, src, dst, proto string
}

func (f *ctFilterFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.service, "service", "", "flows through the frontends of NAMESPACE/NAME")
	fl.StringVar(&f.backend, "backend", "", "flows to backend IP:PORT")
	fl.StringVar(&f.src, "src", "", "entries with this source address (as on the wire)")
	fl.StringVar(&f.dst, "dst", "", "entries with this destination address (as on the wire)")
	fl.StringVar(&f.proto, "proto", "", "tcp or udp")
}

func (f *ctFilterFlags) filter() (services.FlowFilter, error) {
	var (
		out services.FlowFilter
		err error
	)
	out.Service = f.service
	out.Proto = services.Protocol(strings.ToUpper(f.proto))
	if f.backend != "" {
		if out.Backend, err = netip.ParseAddrPort(f.backend); err != nil {
			return out, fmt.Errorf("--backend: want IP:PORT: %w", err)
		}
	}
	if f.src != "" {
		if out.Src, err = netip.ParseAddr(f.src); err != nil {
			return out, fmt.Errorf("--src: %w", err)
		}
	}
	if f.dst != "" {
		if out.Dst, err = netip.ParseAddr(f.dst); err != nil {
			return out, fmt.Errorf("--dst: %w", err)
		}
	}
	return out, nil
}

func newCTCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ct",
		Aliases: []string{"conntrack"},
		Short:   "Connection tracking of service flows: list, flush, reap expired entries",
	}
	cmd.AddCommand(newCTListCmd(g), newCTFlushCmd(g), newCTGCCmd(g))
	return cmd
}

func openServices(g *globals) (*services.Manager, error) {
	return services.Open(g.pinRoot, g.stateDir)
}

func newCTListCmd(g *globals) *cobra.Command {
	var ff ctFilterFlags
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List conntrack entries, both directions of every flow",
		Example: `  podpath ct list
  podpath ct list --service shop/web -o json
  podpath ct list --backend 10.244.1.5:8080`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			f, err := ff.filter()
			if err != nil {
				return err
			}
			m, err := openServices(g)
			if err != nil {
				return err
			}
			defer m.Close()
			flows, err := m.Conntrack().List(f)
			if err != nil {
				return err
			}
			if flows == nil {
				flows = []services.Flow{}
			}
			return g.render(flows, func(w io.Writer) {
				fmt.Fprintln(w, "PROTO\tDIR\tSRC\tDST\tSERVICE\tBACKEND\tEXPIRES\tPACKETS\tBYTES\tFLAGS\tTCP")
				for _, fl := range flows {
					svc := fl.Service
					if svc == "" {
						svc = fmt.Sprintf("#%d", fl.FrontendID)
					} else {
						svc += ":" + fl.Port
					}
					be := fmt.Sprintf("#%d", fl.BackendID)
					if fl.Backend.IsValid() {
						be = fl.Backend.String()
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", fl.Protocol, fl.Direction, fl.Src, fl.Dst,
						svc, be, expiresString(fl.ExpiresIn), fl.Packets, fl.Bytes,
						orDash(strings.Join(fl.Flags, ",")), orDash(strings.Join(fl.TCPFlags, ",")))
				}
			})
		},
	}
	ff.register(cmd)
	return cmd
}

func expiresString(d time.Duration) string {
	if d < 0 {
		return "expired"
	}
	return d.Truncate(time.Second).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newCTFlushCmd(g *globals) *cobra.Command {
	var (
		ff  ctFilterFlags
		all bool
	)
	cmd := &cobra.Command{
		Use:   "flush",
		Short: "Delete conntrack entries: the flows' next packets choose a backend again",
		Example: `  podpath ct flush --service shop/web
  podpath ct flush --backend 10.244.1.5:8080
  podpath ct flush --all`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			f, err := ff.filter()
			if err != nil {
				return err
			}
			if f == (services.FlowFilter{}) && !all {
				return errors.New("say which flows: --service, --backend, --src, --dst, --proto, or --all")
			}
			m, err := openServices(g)
			if err != nil {
				return err
			}
			defer m.Close()
			n, err := m.Conntrack().Flush(f)
			if err != nil {
				return err
			}
			return g.render(map[string]int{"flushed": n}, func(w io.Writer) {
				fmt.Fprintf(w, "%d conntrack entries flushed\n", n)
			})
		},
	}
	ff.register(cmd)
	cmd.Flags().BoolVar(&all, "all", false, "every entry")
	return cmd
}

func newCTGCCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Delete expired conntrack entries (the datapath ignores them already)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			m, err := openServices(g)
			if err != nil {
				return err
			}
			defer m.Close()
			n, err := m.Conntrack().ReapExpired()
			if err != nil {
				return err
			}
			return g.render(map[string]int{"reaped": n}, func(w io.Writer) {
				fmt.Fprintf(w, "%d expired conntrack entries deleted\n", n)
			})
		},
	}
}
