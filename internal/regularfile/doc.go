// Package regularfile opens files that must be regular files — a config, a
// mesh file, a resolv.conf, a token — without waiting on a FIFO put in their
// place (an open(2) of a FIFO blocks until a writer comes, deaf to SIGTERM)
// and refusing anything else before a byte is read. It must not import other
// detour packages.
package regularfile
