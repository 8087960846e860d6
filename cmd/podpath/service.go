package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/podpath/podpath/services"
	"github.com/spf13/cobra"
)

// serviceFlags are the flags every service command shares.
type serviceFlags struct {
	nodePortRange string
}

func (f *serviceFlags) open(g *globals) (*services.Manager, error) {
	r, err := services.ParsePortRange(f.nodePortRange)
	if err != nil {
		return nil, fmt.Errorf("--node-port-range: %w", err)
	}
	return services.Open(g.pinRoot, g.stateDir, services.WithNodePortRange(r))
}

func newServiceCmd(g *globals) *cobra.Command {
	sf := &serviceFlags{}
	cmd := &cobra.Command{
		Use:     "service",
		Aliases: []string{"svc"},
		Short:   "Services: frontends (cluster IP, node ports, external IPs) load-balanced to backends",
	}
	cmd.PersistentFlags().StringVar(&sf.nodePortRange, "node-port-range", services.DefaultNodePortRange.String(),
		"node ports, given or allocated, must lie in this range")
	cmd.AddCommand(newServiceAddCmd(g, sf), newServiceDeleteCmd(g, sf), newServiceListCmd(g, sf),
		newServiceGetCmd(g, sf), newServiceApplyCmd(g, sf))
	return cmd
}

func newServiceAddCmd(g *globals, sf *serviceFlags) *cobra.Command {
	var (
		svc                               services.Service
		typ, clusterIP, affinity, alg, et string
		ports, backends, extIPs, lbIPs    []string
		nodePorts                         []int32
		replace                           bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a service (or replace one with --replace)",
		Long: `Add a service. Ports are [NAME=]PORT[:TARGETPORT][/PROTOCOL] (TCP by
default, target port = port by default). Backends are IP, optionally followed
by ,terminating ,not-ready or ,local (on this node; with --etp Local only
those receive traffic from outside).`,
		Example: `  podpath service add web --namespace shop --cluster-ip 10.96.0.10 --port 80:8080/tcp \
      --backend 10.244.1.5 --backend 10.244.1.6
  podpath service add dns --cluster-ip 10.96.0.53 --port dns=53/udp --port dns-tcp=53/tcp --backend 10.244.1.9
  podpath service add web --type NodePort --cluster-ip 10.96.0.10 --port 80:8080 --node-port 30080 \
      --backend 10.244.1.5,local --backend 10.244.2.7 --etp Local --algorithm maglev
  podpath service add web --cluster-ip 10.96.0.10 --port 80:8080 --backend 10.244.1.5 \
      --affinity ClientIP --affinity-timeout 30 --replace`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			svc.Name = args[0]
			svc.Type = services.ServiceType(typ)
			svc.SessionAffinity = services.SessionAffinity(affinity)
			svc.Algorithm = services.Algorithm(alg)
			svc.ExternalTrafficPolicy = services.TrafficPolicy(et)
			var err error
			if clusterIP != "" {
				if svc.ClusterIP, err = netip.ParseAddr(clusterIP); err != nil {
					return fmt.Errorf("--cluster-ip: %w", err)
				}
			}
			if svc.ExternalIPs, err = parseAddrs("--external-ip", extIPs); err != nil {
				return err
			}
			if svc.LoadBalancerIPs, err = parseAddrs("--lb-ip", lbIPs); err != nil {
				return err
			}
			for _, p := range ports {
				port, err := parsePortSpec(p)
				if err != nil {
					return err
				}
				svc.Ports = append(svc.Ports, port)
			}
			if len(nodePorts) > len(svc.Ports) {
				return fmt.Errorf("%d --node-port for %d --port: give one per port, in order", len(nodePorts), len(svc.Ports))
			}
			for i, np := range nodePorts {
				svc.Ports[i].NodePort = np
			}
			for _, b := range backends {
				be, err := parseBackendSpec(b)
				if err != nil {
					return err
				}
				svc.Backends = append(svc.Backends, be)
			}
			m, err := sf.open(g)
			if err != nil {
				return err
			}
			defer m.Close()
			var sum services.Summary
			if replace {
				sum, err = m.Upsert(cmd.Context(), svc)
			} else {
				sum, err = m.Create(cmd.Context(), svc)
			}
			if errors.Is(err, services.ErrExists) {
				return fmt.Errorf("%w (use --replace to replace it)", err)
			}
			if err != nil {
				return err
			}
			return g.printSummary(sum)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&svc.Namespace, "namespace", "n", services.DefaultNamespace, "namespace")
	f.StringVar(&typ, "type", string(services.TypeClusterIP), "ClusterIP, NodePort or LoadBalancer")
	f.StringVar(&clusterIP, "cluster-ip", "", "the cluster IP (required for type ClusterIP)")
	f.StringArrayVar(&ports, "port", nil, "[NAME=]PORT[:TARGETPORT][/PROTOCOL], repeatable")
	f.Int32SliceVar(&nodePorts, "node-port", nil, "node port of each --port, in order (default: allocated for NodePort and LoadBalancer)")
	f.StringArrayVar(&backends, "backend", nil, "IP[,terminating|,not-ready|,local], repeatable")
	f.StringArrayVar(&extIPs, "external-ip", nil, "an external IP, repeatable")
	f.StringArrayVar(&lbIPs, "lb-ip", nil, "a load-balancer ingress IP (type LoadBalancer), repeatable")
	f.StringVar(&affinity, "affinity", string(services.AffinityNone), "session affinity: None or ClientIP")
	f.Int32Var(&svc.AffinityTimeout, "affinity-timeout", 0, "ClientIP affinity timeout in seconds (default 10800)")
	f.StringVar(&alg, "algorithm", string(services.AlgorithmRandom), "random, round-robin or maglev")
	f.StringVar(&et, "etp", string(services.TrafficPolicyCluster), "external traffic policy: Cluster or Local")
	f.BoolVar(&replace, "replace", false, "replace the service if it exists")
	return cmd
}

func parseAddrs(flag string, in []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range in {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// parsePortSpec reads [NAME=]PORT[:TARGETPORT][/PROTOCOL].
func parsePortSpec(s string) (services.Port, error) {
	var p services.Port
	rest := s
	if name, r, ok := strings.Cut(rest, "="); ok {
		p.Name, rest = name, r
	}
	if r, proto, ok := strings.Cut(rest, "/"); ok {
		p.Protocol, rest = services.Protocol(strings.ToUpper(proto)), r
	}
	port, target, hasTarget := strings.Cut(rest, ":")
	n, err := strconv.ParseInt(port, 10, 32)
	if err != nil {
		return p, fmt.Errorf("--port %q: want [NAME=]PORT[:TARGETPORT][/PROTOCOL]", s)
	}
	p.Port = int32(n)
	if hasTarget {
		n, err := strconv.ParseInt(target, 10, 32)
		if err != nil {
			return p, fmt.Errorf("--port %q: target port %q is not a number", s, target)
		}
		p.TargetPort = int32(n)
	}
	return p, nil
}

// parseBackendSpec reads IP[,terminating|,not-ready|,local]...
func parseBackendSpec(s string) (services.Backend, error) {
	parts := strings.Split(s, ",")
	ip, err := netip.ParseAddr(parts[0])
	if err != nil {
		return services.Backend{}, fmt.Errorf("--backend %q: %w", s, err)
	}
	b := services.Backend{IP: ip, Ready: true}
	for _, opt := range parts[1:] {
		switch opt {
		case "terminating":
			b.Terminating = true
		case "not-ready":
			b.Ready = false
		case "local":
			b.Local = true
		default:
			return b, fmt.Errorf("--backend %q: unknown option %q (want terminating, not-ready or local)", s, opt)
		}
	}
	return b, nil
}

func newServiceDeleteCmd(g *globals, sf *serviceFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAMESPACE/NAME",
		Aliases: []string{"del", "rm"},
		Short:   "Delete a service; its flows are flushed",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, err := services.ParseKey(args[0])
			if err != nil {
				return err
			}
			m, err := sf.open(g)
			if err != nil {
				return err
			}
			defer m.Close()
			sum, err := m.Delete(cmd.Context(), ns, name)
			if err != nil {
				return err
			}
			return g.printSummary(sum)
		},
	}
}

func newServiceListCmd(g *globals, sf *serviceFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List services",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			m, err := sf.open(g)
			if err != nil {
				return err
			}
			defer m.Close()
			list, err := m.List()
			if err != nil {
				return err
			}
			if list == nil {
				list = []services.Service{}
			}
			return g.render(list, func(w io.Writer) {
				fmt.Fprintln(w, "NAMESPACE\tNAME\tTYPE\tCLUSTER-IP\tEXTERNAL-IP\tPORT(S)\tBACKENDS\tALGORITHM\tAFFINITY")
				for _, s := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, s.Type,
						orNone(addrString(s.ClusterIP)), orNone(joinAddrs(append(append([]netip.Addr{}, s.ExternalIPs...), s.LoadBalancerIPs...))),
						portsString(s.Ports), backendsString(s.Backends), s.Algorithm, affinityString(s))
				}
			})
		},
	}
}

func newServiceGetCmd(g *globals, sf *serviceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAMESPACE/NAME",
		Short: "Show a service and what is programmed for it: frontend ids, slots, backend ids",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			ns, name, err := services.ParseKey(args[0])
			if err != nil {
				return err
			}
			m, err := sf.open(g)
			if err != nil {
				return err
			}
			defer m.Close()
			st, err := m.Status(ns, name)
			if err != nil {
				return err
			}
			return g.render(st, func(w io.Writer) { printServiceStatus(w, st) })
		},
	}
}

func printServiceStatus(w io.Writer, st services.ServiceStatus) {
	s := st.Service
	fmt.Fprintf(w, "Name:\t%s/%s\n", s.Namespace, s.Name)
	fmt.Fprintf(w, "Type:\t%s\n", s.Type)
	fmt.Fprintf(w, "Cluster IP:\t%s\n", orNone(addrString(s.ClusterIP)))
	fmt.Fprintf(w, "External IPs:\t%s\n", orNone(joinAddrs(s.ExternalIPs)))
	if s.Type == services.TypeLoadBalancer {
		fmt.Fprintf(w, "Load-balancer IPs:\t%s\n", orNone(joinAddrs(s.LoadBalancerIPs)))
	}
	fmt.Fprintf(w, "Ports:\t%s\n", portsString(s.Ports))
	fmt.Fprintf(w, "Algorithm:\t%s\n", s.Algorithm)
	fmt.Fprintf(w, "Session affinity:\t%s\n", affinityString(s))
	fmt.Fprintf(w, "External traffic policy:\t%s\n", s.ExternalTrafficPolicy)
	fmt.Fprintln(w, "Backends:")
	for _, b := range s.Backends {
		fmt.Fprintf(w, "  %s\t%s\n", b.IP, backendState(b))
	}
	fmt.Fprintln(w, "\nFRONTEND\tID\tSCOPE\tPORT\tACTIVE (slot order)\tKEEPING FLOWS")
	for _, f := range st.Frontends {
		var active, others []string
		for _, b := range f.Active {
			active = append(active, fmt.Sprintf("%s#%d", b.Address, b.ID))
		}
		for _, b := range f.Others {
			others = append(others, fmt.Sprintf("%s#%d", b.Address, b.ID))
		}
		fmt.Fprintf(w, "%s/%s\t%d\t%s\t%s\t%s\t%s\n", f.Address, f.Protocol, f.ID, f.Scope, f.Port,
			orNone(strings.Join(active, " ")), orNone(strings.Join(others, " ")))
	}
}

func newServiceApplyCmd(g *globals, sf *serviceFlags) *cobra.Command {
	var (
		file                      string
		prune, dryRun, allowEmpty bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Make the services in a YAML or JSON file the node's services",
		Long: `Make the services in FILE (YAML or JSON; "-" reads stdin) the node's services.
Each document of FILE (YAML documents separated by "---", or a stream of JSON
values) is a list of services, or an object with a "services" list; every
document is read. Services not in the file are removed unless --prune=false.
The whole file is checked first: when anything in it is invalid (an unknown
field, a service defined twice, a document without services), nothing
changes. A file without any service is refused unless --allow-empty: applied,
it would remove every service on the node.`,
		Example: `  podpath service apply -f services.yaml
  podpath service apply -f services.yaml --dry-run
  podpath service apply -f extra.yaml --prune=false
  podpath service apply -f /dev/null --allow-empty     # remove every service`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("-f FILE is required")
			}
			data, err := readInput(file)
			if err != nil {
				return err
			}
			svcs, err := decodeServices(data, allowEmpty)
			if file == "-" {
				file = "stdin"
			}
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			m, err := sf.open(g)
			if err != nil {
				return err
			}
			defer m.Close()
			var sum services.Summary
			switch {
			case dryRun && prune:
				sum, err = m.Diff(svcs)
			case dryRun:
				cur, lerr := m.List()
				if lerr != nil {
					return lerr
				}
				sum, err = m.Diff(mergeServices(cur, svcs))
			case prune:
				sum, err = m.Apply(cmd.Context(), svcs)
			default:
				sum, err = m.Upsert(cmd.Context(), svcs...)
			}
			if err != nil {
				return err
			}
			if dryRun && g.output != "json" {
				fmt.Print("dry run, nothing changed: ")
			}
			return g.printSummary(sum)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "filename", "f", "", "YAML or JSON file of services (- for stdin)")
	f.BoolVar(&prune, "prune", true, "remove services that are not in the file")
	f.BoolVar(&dryRun, "dry-run", false, "check the file and show what would change, change nothing")
	f.BoolVar(&allowEmpty, "allow-empty", false, "accept a file (or a document) without services: with pruning, the node is left with none")
	return cmd
}

// mergeServices is cur with every service of add put in (replacing the one
// of the same namespace and name).
func mergeServices(cur, add []services.Service) []services.Service {
	out := append([]services.Service{}, cur...)
	for _, s := range add {
		ns := s.Namespace
		if ns == "" {
			ns = services.DefaultNamespace
		}
		replaced := false
		for i := range out {
			if out[i].Namespace == ns && out[i].Name == s.Name {
				out[i], replaced = s, true
			}
		}
		if !replaced {
			out = append(out, s)
		}
	}
	return out
}

func (g *globals) printSummary(sum services.Summary) error {
	return g.render(sum, func(w io.Writer) {
		var parts []string
		for _, x := range []struct {
			what string
			list []string
		}{{"added", sum.Added}, {"updated", sum.Updated}, {"removed", sum.Removed}} {
			if len(x.list) > 0 {
				parts = append(parts, fmt.Sprintf("%s %s", x.what, strings.Join(x.list, " ")))
			}
		}
		if len(sum.Unchanged) > 0 {
			parts = append(parts, fmt.Sprintf("%d unchanged", len(sum.Unchanged)))
		}
		if len(parts) == 0 {
			parts = append(parts, "no services")
		}
		fmt.Fprintf(w, "%s; %d map entries written", strings.Join(parts, "; "), sum.MapWrites)
		if sum.Flushed > 0 {
			fmt.Fprintf(w, ", %d conntrack entries flushed", sum.Flushed)
		}
		if sum.Resynced {
			fmt.Fprint(w, " (maps re-synchronised)")
		}
		fmt.Fprintln(w)
	})
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// portsString is kubectl's PORT(S) with the target port: "80:30080->8080/TCP".
func portsString(ps []services.Port) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		s := strconv.Itoa(int(p.Port))
		if p.NodePort != 0 {
			s += ":" + strconv.Itoa(int(p.NodePort))
		}
		if p.TargetPort != p.Port {
			s += "->" + strconv.Itoa(int(p.TargetPort))
		}
		out[i] = s + "/" + string(p.Protocol)
	}
	return strings.Join(out, ",")
}

// backendsString is "active/listed".
func backendsString(bs []services.Backend) string {
	active := 0
	for _, b := range bs {
		if b.Active() {
			active++
		}
	}
	return fmt.Sprintf("%d/%d", active, len(bs))
}

func backendState(b services.Backend) string {
	var s []string
	switch {
	case b.Terminating:
		s = append(s, "terminating")
	case !b.Ready:
		s = append(s, "not ready")
	default:
		s = append(s, "active")
	}
	if b.Local {
		s = append(s, "local")
	}
	return strings.Join(s, ", ")
}

func affinityString(s services.Service) string {
	if s.SessionAffinity == services.AffinityClientIP {
		return fmt.Sprintf("ClientIP (%ds)", s.AffinityTimeout)
	}
	return string(s.SessionAffinity)
}

// readInput reads a file named by -f, or standard input for "-".
func readInput(file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(file)
}
