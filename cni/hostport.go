package cni

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/podpath/podpath/services"
)

// HostPortNamespace holds the services that carry pods' hostPorts. Their
// names are the pods' host veth names (plus a suffix per host address), so
// they are unique per attachment and DEL and GC find them without state.
const HostPortNamespace = "cni-hostport"

// hostPortServices turns the runtime's port mappings into HostPort services
// (without backend: ADD knows the address later), one per host address.
func hostPortServices(pms []PortMapping) ([]services.Service, error) {
	byHost := map[netip.Addr]*services.Service{}
	var order []netip.Addr
	for i, pm := range pms {
		proto := services.Protocol(strings.ToUpper(pm.Protocol))
		if proto == "" {
			proto = services.ProtocolTCP
		}
		if proto != services.ProtocolTCP && proto != services.ProtocolUDP {
			return nil, invalidConfig("portMappings[%d]: protocol %q: want tcp or udp", i, pm.Protocol)
		}
		if pm.HostPort < 1 || pm.HostPort > 65535 || pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
			return nil, invalidConfig("portMappings[%d]: hostPort %d and containerPort %d must be 1-65535", i, pm.HostPort, pm.ContainerPort)
		}
		var host netip.Addr
		if pm.HostIP != "" && pm.HostIP != "0.0.0.0" {
			a, err := netip.ParseAddr(pm.HostIP)
			if err != nil || !a.Is4() {
				return nil, invalidConfig("portMappings[%d]: hostIP %q: want an IPv4 address of the node (IPv6 is not supported yet)", i, pm.HostIP)
			}
			host = a
		}
		s := byHost[host]
		if s == nil {
			s = &services.Service{Namespace: HostPortNamespace, Type: services.TypeHostPort, HostIP: host}
			byHost[host] = s
			order = append(order, host)
		}
		s.Ports = append(s.Ports, services.Port{
			Name:       fmt.Sprintf("%s-%d", strings.ToLower(string(proto)), pm.HostPort),
			Protocol:   proto,
			Port:       int32(pm.HostPort),
			TargetPort: int32(pm.ContainerPort),
		})
	}
	out := make([]services.Service, 0, len(order))
	for _, h := range order {
		out = append(out, *byHost[h])
	}
	return out, nil
}

// hostPortName names an attachment's HostPort service for one host address.
func hostPortName(hostVeth string, host netip.Addr) string {
	if !host.IsValid() {
		return hostVeth
	}
	h := fnv.New32a()
	h.Write(host.AsSlice())
	return fmt.Sprintf("%s-%08x", hostVeth, h.Sum32())
}

// addHostPorts opens the pod's hostPorts: services towards pod:containerPort.
func addHostPorts(conf *Config, hostVeth string, pod netip.Addr) error {
	if len(conf.HostPorts) == 0 {
		return nil
	}
	m, err := services.Open(conf.PinRoot, conf.StateDir)
	if err != nil {
		return datapathError(err)
	}
	defer m.Close()
	svcs := slices.Clone(conf.HostPorts)
	for i := range svcs {
		svcs[i].Name = hostPortName(hostVeth, svcs[i].HostIP)
		svcs[i].Backends = []services.Backend{{IP: pod, Ready: true, Local: true}}
	}
	if _, err := m.Upsert(context.Background(), svcs...); err != nil {
		if errors.Is(err, services.ErrInvalid) {
			return newError(CodeHostPortConflict, "hostPort: %v", err)
		}
		return err
	}
	return nil
}

// removeHostPorts closes the hostPorts of the attachment whose host veth is
// hostVeth.
func removeHostPorts(conf *Config, hostVeth string) error {
	m, list, err := hostPortList(conf)
	if m == nil {
		return err
	}
	defer m.Close()
	var errs []error
	for _, s := range list {
		if veth, ok := hostPortVeth(s); !ok || veth != hostVeth {
			continue
		}
		if _, err := m.Delete(context.Background(), s.Namespace, s.Name); err != nil && !errors.Is(err, services.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// hostPortVeths lists the host veths of the attachments with hostPorts.
func hostPortVeths(conf *Config) ([]string, error) {
	m, list, err := hostPortList(conf)
	if m == nil {
		return nil, err
	}
	defer m.Close()
	var out []string
	for _, s := range list {
		if veth, ok := hostPortVeth(s); ok && !slices.Contains(out, veth) {
			out = append(out, veth)
		}
	}
	return out, nil
}

// hostPortList opens the node's services and lists them; a nil manager
// when there is nothing to list.
func hostPortList(conf *Config) (*services.Manager, []services.Service, error) {
	m, err := services.Open(conf.PinRoot, conf.StateDir)
	if err != nil {
		// No datapath, no node: nothing can be listening.
		return nil, nil, nil
	}
	list, err := m.List()
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, list, nil
}

// hostPortVeth tells whether s carries hostPorts, and whose.
func hostPortVeth(s services.Service) (string, bool) {
	if s.Namespace != HostPortNamespace || s.Type != services.TypeHostPort {
		return "", false
	}
	veth, _, _ := strings.Cut(s.Name, "-")
	return veth, true
}

// hasServices tells whether the node has service state at all: without it
// there are no hostPorts to close, and DEL need not open the service maps.
func hasServices(stateDir string) bool {
	_, err := os.Stat(services.StatePath(stateDir))
	return err == nil
}
