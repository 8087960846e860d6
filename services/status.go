package services

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/podpath/podpath/maps"
)

// ServiceStatus is a service with what was programmed for it.
type ServiceStatus struct {
	Service   Service          `json:"service"`
	Frontends []FrontendStatus `json:"frontends"`
}

// FrontendStatus is one programmed frontend of a service.
type FrontendStatus struct {
	ID        uint32         `json:"id"`
	Address   netip.AddrPort `json:"address"` // 0.0.0.0:port for a node port
	Protocol  Protocol       `json:"protocol"`
	Scope     string         `json:"scope"` // internal or external
	Port      string         `json:"port"`  // the service port's name or number
	Algorithm Algorithm      `json:"algorithm"`
	// Active backends, in slot order (slot 1 first).
	Active []BackendStatus `json:"active"`
	// Others: backends that keep their flows but take no new ones.
	Others []BackendStatus `json:"others,omitempty"`
}

// BackendStatus is one programmed backend.
type BackendStatus struct {
	ID          uint32         `json:"id"`
	Address     netip.AddrPort `json:"address"`
	Terminating bool           `json:"terminating,omitempty"` // flagged in the backends map
}

// Status returns a service and its programmed frontends.
func (m *Manager) Status(namespace, name string) (ServiceStatus, error) {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	var out ServiceStatus
	err := m.locked(false, func() error {
		st, err := m.load()
		if err != nil {
			return err
		}
		i := slices.IndexFunc(st.Services, func(s Service) bool { return s.Namespace == namespace && s.Name == name })
		if i < 0 {
			return fmt.Errorf("%w: %s/%s", ErrNotFound, namespace, name)
		}
		out.Service = st.Services[i]
		for _, f := range st.prog.frontendsOfService(out.Service.Key()) {
			out.Frontends = append(out.Frontends, frontendStatus(f, st.prog))
		}
		return nil
	})
	return out, err
}

func frontendStatus(f *frontend, p *programmed) FrontendStatus {
	fs := FrontendStatus{
		ID:       f.ID,
		Address:  netip.AddrPortFrom(f.Key.Addr.addr(), f.Key.Port),
		Protocol: Protocol(protoName(f.Key.Proto)),
		Scope:    scopeName(f.Key.Scope),
		Port:     f.Port,
	}
	switch f.Algo {
	case uint8(maps.AlgoRoundRobin):
		fs.Algorithm = AlgorithmRoundRobin
	case uint8(maps.AlgoMaglev):
		fs.Algorithm = AlgorithmMaglev
	default:
		fs.Algorithm = AlgorithmRandom
	}
	bs := func(id uint32) BackendStatus {
		b := p.beByID[id]
		if b == nil {
			return BackendStatus{ID: id}
		}
		return BackendStatus{ID: id, Address: b.Key.addrPort(), Terminating: b.Terminating}
	}
	for _, id := range f.Slots {
		fs.Active = append(fs.Active, bs(id))
	}
	for _, id := range f.Members {
		if !slices.Contains(f.Slots, id) {
			fs.Others = append(fs.Others, bs(id))
		}
	}
	return fs
}
