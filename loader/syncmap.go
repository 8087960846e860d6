package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// syncMap makes m hold exactly want: entries not in it are deleted, the
// others written. Readers may see the old and new sets mixed meanwhile,
// never an entry that is in neither.
func syncMap[K comparable, V any](m *ebpf.Map, want map[K]V) error {
	var (
		key   K
		val   V
		stale []K
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		if _, ok := want[key]; !ok {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", m, err)
	}
	for _, k := range stale {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", m, err)
		}
	}
	for k, v := range want {
		if err := m.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write %s: %w", m, err)
		}
	}
	return nil
}
