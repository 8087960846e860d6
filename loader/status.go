package loader

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/maps"
)

// ProgramStatus is a pinned program as the kernel reports it.
type ProgramStatus struct {
	Name string `json:"name"`
	ID   uint32 `json:"id"`
	Tag  string `json:"tag"`
	Type string `json:"type"`
}

// MapStatus is a pinned map as the kernel reports it.
type MapStatus struct {
	Name       string `json:"name"`
	ID         uint32 `json:"id"`
	Type       string `json:"type"`
	Entries    int    `json:"entries"`
	MaxEntries uint32 `json:"maxEntries"`
	KeySize    uint32 `json:"keySize"`
	ValueSize  uint32 `json:"valueSize"`
	Memlock    uint64 `json:"memlockBytes"`
}

// Status is what is loaded for a node and attached where.
type Status struct {
	Loaded      bool            `json:"loaded"`
	Config      *Config         `json:"config,omitempty"`
	Features    Features        `json:"features"`
	Programs    []ProgramStatus `json:"programs"`
	Maps        []MapStatus     `json:"maps"`
	Attachments []Attachment    `json:"attachments"`
	// CgroupAttachments are the socket load balancer's cgroups.
	CgroupAttachments []CgroupAttachment `json:"cgroupAttachments,omitempty"`
}

// ReadStatus gathers the node's state from its pins, the kernel and netlink.
func ReadStatus(pinRoot, stateDir string) (*Status, error) {
	st := &Status{}
	f, err := Probe()
	if err != nil {
		return nil, err
	}
	st.Features = f
	if c, err := ReadNodeConfig(stateDir); err == nil {
		st.Config = &c
	}
	specs, err := maps.Specs()
	if err != nil {
		return nil, err
	}
	for _, name := range append(sortedKeys(specs), maps.SocketPrograms...) {
		p, err := ebpf.LoadPinnedProgram(maps.ProgPath(pinRoot, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open program %s: %w", name, err)
		}
		ps := ProgramStatus{Name: name}
		if info, err := p.Info(); err == nil {
			id, _ := info.ID()
			ps.ID, ps.Tag, ps.Type = uint32(id), info.Tag, info.Type.String()
		}
		p.Close()
		st.Programs = append(st.Programs, ps)
	}
	for _, name := range maps.AllMaps {
		m, err := ebpf.LoadPinnedMap(maps.MapPath(pinRoot, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open map %s: %w", name, err)
		}
		ms := MapStatus{Name: name, Type: m.Type().String(), MaxEntries: m.MaxEntries(), KeySize: m.KeySize(), ValueSize: m.ValueSize()}
		if info, err := m.Info(); err == nil {
			id, _ := info.ID()
			ms.ID = uint32(id)
			ms.Memlock, _ = info.Memlock()
		}
		ms.Entries = maps.CountEntries(m)
		m.Close()
		st.Maps = append(st.Maps, ms)
	}
	st.Loaded = len(st.Programs) > 0 && len(st.Maps) == len(maps.AllMaps)
	st.Attachments, err = Attachments(pinRoot)
	if err != nil {
		return nil, err
	}
	st.CgroupAttachments, err = CgroupAttachments(pinRoot)
	if err != nil {
		return nil, err
	}
	return st, nil
}
