package services

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// journalFile holds the incremental updates made since services.state was
// written, one JSON record a line. Reading the state means reading the
// file and replaying the journal's records of the same generation; a whole
// update writes a new state (the next generation) and removes the journal.
const journalFile = "services.journal"

// journalCompact: past this size the journal is folded into a new state.
const journalCompact = 4 << 20

// journalRecord is one incremental update: the services put in and taken
// out, and what was programmed for them.
type journalRecord struct {
	Gen           uint64          `json:"gen"`
	Services      []Service       `json:"services,omitempty"`
	Removed       []string        `json:"removed,omitempty"`
	Frontends     []*frontend     `json:"frontends,omitempty"`
	FrontendsGone []feKey         `json:"frontendsGone,omitempty"`
	Backends      []*backendEntry `json:"backends,omitempty"`
	BackendsGone  []beKey         `json:"backendsGone,omitempty"`
	NextBackendID uint32          `json:"nextBackendID"`
}

func (m *Manager) journalPath() string { return filepath.Join(m.cfg.StateDir, journalFile) }

// replayJournal applies the journal's records of st's generation. A last
// line cut short (the writer died) is ignored: the dirty marker it left
// makes the next update re-synchronise the maps.
func replayJournal(path string, st *state) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, len(b)+1)
	for sc.Scan() {
		var rec journalRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			break
		}
		if rec.Gen != st.Gen {
			continue // written before the state was: already in it
		}
		st.apply(&rec)
	}
	return sc.Err()
}

// apply replays one record onto the state.
func (st *state) apply(rec *journalRecord) {
	p := st.prog
	for _, k := range rec.FrontendsGone {
		delete(p.fe, k)
	}
	for _, k := range rec.BackendsGone {
		if b := p.be[k]; b != nil {
			delete(p.beByID, b.ID)
			delete(p.be, k)
		}
	}
	for _, b := range rec.Backends {
		p.addBackend(b)
	}
	for _, f := range rec.Frontends {
		p.fe[f.Key] = f
	}
	p.nextBackendID = rec.NextBackendID
	st.setServices(rec.Services, rec.Removed)
	st.ix = nil
}

// appendJournal records an incremental update. It is not synced: the maps
// it describes live in kernel memory and go with a power cut too (the next
// update then finds new maps and re-synchronises); what must survive is
// the death of this process, which the page cache already outlives.
func (m *Manager) appendJournal(st *state, rec *journalRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(m.journalPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("record services: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record services: %w", err)
	}
	fi, err := os.Stat(m.journalPath())
	if err != nil {
		return err
	}
	if fi.Size() > journalCompact {
		return m.save(st)
	}
	m.jstat = fi
	return nil
}
