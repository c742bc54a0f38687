// Command floor prints one line and exits: the start-up cost of a static Go
// binary that does nothing, measured next to detour's by `make bench-cli` so
// that its figures can be read against what the machine allows.
package main

import "os"

func main() {
	os.Stdout.WriteString("floor\n")
}
