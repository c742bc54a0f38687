package redirect

import (
	"context"
	"errors"
	"fmt"
)

// explainWith is Engine.Explain over Drivers: it asks the first driver whose
// observed state holds detour's what the kernel does with c, through the
// optional Explainer interface — it never names a backend. A driver that holds
// detour's state but cannot explain is ErrNotSupported (naming it); no driver
// holding anything is ErrNotInstalled. Drivers that are not Ready here are
// passed over. It runs in the namespace the caller entered.
func explainWith(ctx context.Context, drivers []Driver, c Conn) (KernelVerdict, error) {
	for _, d := range drivers {
		if err := d.Ready(ctx); errors.Is(err, ErrNotSupported) {
			continue
		}
		have, err := d.Observe(ctx)
		if err != nil {
			return KernelVerdict{}, fmt.Errorf("observe %s: %w", d.Name(), err)
		}
		if have.Empty() {
			continue
		}
		ex, ok := d.(Explainer)
		if !ok {
			return KernelVerdict{Backend: d.Name()}, fmt.Errorf("%s holds detour's state but cannot explain a connection: %w", d.Name(), ErrNotSupported)
		}
		kv, err := ex.Explain(have, c)
		if err != nil {
			return kv, fmt.Errorf("explain with %s: %w", d.Name(), err)
		}
		kv.Backend = d.Name()
		return kv, nil
	}
	return KernelVerdict{}, ErrNotInstalled
}
