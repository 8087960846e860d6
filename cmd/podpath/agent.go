package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podpath/podpath/agent"
	"github.com/podpath/podpath/loader"
	"github.com/podpath/podpath/services"
)

func newAgentCmd(g *globals) *cobra.Command {
	var (
		c                      agent.Config
		podCIDR, nodePortRange string
		snatAddr, snatPorts    string
		clusterCIDRs, nonMasq  []string
		qps                    float32
		burst                  int
		cniBinSource           string
		disableSocketLB        bool
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node daemon: follow Kubernetes, keep the datapath, replace kube-proxy",
		Long: `The agent loads the datapath (as node init does), installs the CNI plugin
once it serves, programs Services and EndpointSlices as kube-proxy would,
reaps expired conntrack, affinity and SNAT entries, and serves /healthz,
/readyz and /metrics. Stopping or killing it leaves the datapath serving;
"podpath node reset" removes everything.`,
		Example: `  podpath agent --kubeconfig /etc/kubernetes/kubelet.conf --cluster-cidr 10.244.0.0/16 --cluster-cidr 10.96.0.0/12
  NODE_NAME=node1 podpath agent     # in a DaemonSet: in-cluster config, pod CIDR and uplink from the Node`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.NodeName == "" {
				h, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("--node-name: not given, no $NODE_NAME, and no hostname: %w", err)
				}
				c.NodeName = h
			}
			if podCIDR != "" {
				p, err := netip.ParsePrefix(podCIDR)
				if err != nil {
					return fmt.Errorf("--pod-cidr: %w", err)
				}
				c.Node.PodCIDR = p
			}
			r, err := services.ParsePortRange(nodePortRange)
			if err != nil {
				return fmt.Errorf("--node-port-range: %w", err)
			}
			c.NodePortRange = r
			if err := parseSNATFlags(&c.Node, snatAddr, snatPorts, clusterCIDRs, nonMasq); err != nil {
				return err
			}
			c.Node.PinRoot, c.Node.StateDir = g.pinRoot, g.stateDir
			if disableSocketLB {
				c.SocketLBCgroup = ""
			}
			if c.CNIBinDir != "" {
				if cniBinSource == "" {
					exe, err := os.Executable()
					if err != nil {
						return err
					}
					cniBinSource = filepath.Join(filepath.Dir(exe), "podpath-cni")
				}
				c.CNIBinSource = cniBinSource
			}
			client, err := kubeClient(c.Kubeconfig, qps, burst)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			slog.Info("podpath agent starting", "node", c.NodeName, "pinRoot", c.Node.PinRoot, "stateDir", c.Node.StateDir)
			return agent.New(c, client).Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: the in-cluster config)")
	f.Float32Var(&qps, "kube-api-qps", 20, "queries per second to the API server")
	f.IntVar(&burst, "kube-api-burst", 40, "burst of queries to the API server")
	f.StringVar(&c.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, else the hostname)")
	f.StringVar(&podCIDR, "pod-cidr", "", "this node's pod range (default: the Node's spec.podCIDRs, waiting until it is set)")
	f.StringSliceVar(&c.Node.Uplinks, "uplink", nil, "device(s) traffic from the network arrives on (default: the device holding the Node's InternalIP)")
	f.StringSliceVar(&clusterCIDRs, "cluster-cidr", nil, "cluster pod and service ranges: never masqueraded")
	f.StringSliceVar(&nonMasq, "non-masquerade-cidr", nil, "further destinations reached without masquerading")
	f.BoolVar(&c.Node.NoSNAT, "no-snat", false, "do not masquerade pods' traffic leaving through the uplinks")
	f.StringVar(&snatAddr, "snat-addr", "", "address pods' traffic leaves with (default: the first uplink's first IPv4 address)")
	f.StringVar(&snatPorts, "snat-ports", fmt.Sprintf("%d-%d", loader.DefaultSNATPortMin, loader.DefaultSNATPortMax), "port range for masqueraded flows")
	f.IntVar(&c.Node.MTU, "mtu", 0, "MTU of pod interfaces (default: the uplink's, less 50 with --routing vxlan)")
	addRoutingFlags(cmd, &c.Node)
	f.Uint32Var(&c.Node.MaxEndpoints, "max-endpoints", loader.DefaultMaxEndpoints, "size of the endpoints map")
	f.Uint32Var(&c.Node.MaxServices, "max-services", loader.DefaultMaxServices, "size of the services map (frontends)")
	f.Uint32Var(&c.Node.MaxBackends, "max-backends", loader.DefaultMaxBackends, "size of the backends map")
	f.Uint32Var(&c.Node.Conntrack, "conntrack-size", loader.DefaultConntrack, "size of the conntrack map (flow directions)")
	f.Uint32Var(&c.Node.MaxNAT, "max-nat", loader.DefaultMaxNAT, "size of the SNAT map (two entries per flow)")
	f.Uint32Var(&c.Node.MaglevTableSize, "maglev-table-size", loader.DefaultMaglevTableSize, "entries of each Maglev table (a prime)")
	f.StringVar(&c.Node.TCAttach, "tc-attach", "auto", "tc attach mechanism: auto (tcx where the kernel has it), tcx, or tc")
	addXDPModeFlags(cmd, &c.Node.XDPMode)
	f.StringVar(&c.SocketLBCgroup, "socket-lb-cgroup", loader.DefaultCgroup2Mount, "cgroup v2 whose processes reach Services by socket-level load balancing (cgroup2 is mounted there if needed; its root holds every process of the node)")
	f.BoolVar(&disableSocketLB, "no-socket-lb", false, "node processes do not reach Services (no socket-level load balancing)")
	f.StringVar(&nodePortRange, "node-port-range", services.DefaultNodePortRange.String(), "the cluster's --service-node-port-range")
	f.StringVar(&c.MetricsAddr, "metrics-bind-address", "127.0.0.1:10249", "where /metrics is served (empty: not served)")
	f.StringVar(&c.HealthzAddr, "healthz-bind-address", "127.0.0.1:10256", "where /healthz and /readyz are served (empty: not served)")
	f.StringVar(&c.HealthCheckAddr, "health-check-address", "", "host the health check node ports of externalTrafficPolicy Local Services listen on (default: every address)")
	f.StringVar(&c.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "where podpath-cni is installed once the datapath serves (empty: not installed)")
	f.StringVar(&c.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "where the conflist "+agent.CNIConfName+" is written")
	f.StringVar(&cniBinSource, "cni-bin-source", "", "the podpath-cni binary to install (default: beside this binary)")
	f.DurationVar(&c.MinSyncPeriod, "min-sync-period", agent.DefaultMinSyncPeriod, "least time between two syncs of Services into the maps")
	f.DurationVar(&c.SyncPeriod, "sync-period", agent.DefaultSyncPeriod, "time between full resyncs (every map entry rewritten, drift repaired)")
	f.DurationVar(&c.ReapPeriod, "reap-period", agent.DefaultReapPeriod, "time between reaping expired conntrack, affinity and SNAT entries")
	f.DurationVar(&c.HealthzTimeout, "healthz-timeout", agent.DefaultHealthzTimeout, "/healthz fails when a change has waited longer than this")
	return cmd
}

// kubeClient builds a client from a kubeconfig file, or from the in-cluster
// configuration when none is given.
func kubeClient(kubeconfig string, qps float32, burst int) (kubernetes.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and no in-cluster configuration: %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = qps, burst
	cfg.UserAgent = "podpath-agent"
	return kubernetes.NewForConfig(cfg)
}
