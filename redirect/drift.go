package redirect

import (
	"fmt"
	"slices"
	"strings"
)

// familyDrift compares installed with planned lines; ok is false when they agree.
func familyDrift(f Family, installed, planned []string) (FamilyDrift, bool) {
	ops := diffLines(installed, planned)
	d := FamilyDrift{Family: f, Missing: []string{}, Unexpected: []string{}} // lists, also when empty (JSON [])
	for _, op := range ops {
		switch op.kind {
		case '-':
			d.Unexpected = append(d.Unexpected, op.line)
		case '+':
			d.Missing = append(d.Missing, op.line)
		}
	}
	if len(d.Missing) == 0 && len(d.Unexpected) == 0 {
		return FamilyDrift{}, false
	}
	d.diff = unified(fmt.Sprintf("installed %s", f), fmt.Sprintf("planned %s", f), ops)
	return d, true
}

type diffOp struct {
	kind byte // ' ', '-', '+'
	line string
}

// maxLCSCells bounds the table of the longest-common-subsequence diff
// (4 Mi cells, 16 MiB): past it the lines that differ are found by counting.
const maxLCSCells = 4 << 20

// diffLines is a line diff of a (installed) against b (planned). The lines
// both begin and end with are kept as they are; what lies between is diffed
// by longest common subsequence when that is small, and otherwise by
// counting lines: a line of a's middle that b's middle lacks (as often) is
// '-', one of b's that a's lacks is '+'. Rule sets with long lists (an
// nftables element or an iptables rule per CIDR) have tens of thousands of
// lines, and the table of a full LCS over them took gigabytes.
func diffLines(a, b []string) []diffOp {
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ops := make([]diffOp, 0, len(a)+len(b)-pre-suf)
	for _, l := range a[:pre] {
		ops = append(ops, diffOp{' ', l})
	}
	am, bm := a[pre:len(a)-suf], b[pre:len(b)-suf]
	if len(am)*len(bm) <= maxLCSCells {
		ops = append(ops, lcsDiff(am, bm)...)
	} else {
		ops = append(ops, countDiff(am, bm)...)
	}
	for _, l := range a[len(a)-suf:] {
		ops = append(ops, diffOp{' ', l})
	}
	return ops
}

// lcsDiff is a longest-common-subsequence line diff.
func lcsDiff(a, b []string) []diffOp {
	n, m := len(a), len(b)
	// One table, row by row: lcs(i, j) is cells[i*(m+1)+j].
	cells := make([]int32, (n+1)*(m+1))
	at := func(i, j int) int32 { return cells[i*(m+1)+j] }
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				cells[i*(m+1)+j] = at(i+1, j+1) + 1
			} else {
				cells[i*(m+1)+j] = max(at(i+1, j), at(i, j+1))
			}
		}
	}
	var ops []diffOp
	i, j := 0, 0
	for i < n && j < m {
		switch {
		case a[i] == b[j]:
			ops = append(ops, diffOp{' ', a[i]})
			i, j = i+1, j+1
		case at(i+1, j) >= at(i, j+1):
			ops = append(ops, diffOp{'-', a[i]})
			i++
		default:
			ops = append(ops, diffOp{'+', b[j]})
			j++
		}
	}
	for ; i < n; i++ {
		ops = append(ops, diffOp{'-', a[i]})
	}
	for ; j < m; j++ {
		ops = append(ops, diffOp{'+', b[j]})
	}
	return ops
}

// countDiff is the diff of lists too long for lcsDiff: a's lines in order,
// each ' ' while b holds as many of it and '-' past that, then b's lines
// that a lacks, '+', in b's order. When both hold the same lines in another
// order (rules reordered: drift too), each position where they differ is a
// '-' of a's line and a '+' of b's.
func countDiff(a, b []string) []diffOp {
	ops := countOps(a, b)
	if slices.ContainsFunc(ops, func(op diffOp) bool { return op.kind != ' ' }) {
		return ops
	}
	ops = ops[:0]
	for k := range a {
		if a[k] == b[k] {
			ops = append(ops, diffOp{' ', a[k]})
		} else {
			ops = append(ops, diffOp{'-', a[k]}, diffOp{'+', b[k]})
		}
	}
	return ops
}

func countOps(a, b []string) []diffOp {
	inB := make(map[string]int, len(b))
	for _, l := range b {
		inB[l]++
	}
	ops := make([]diffOp, 0, len(a)+len(b))
	for _, l := range a {
		if inB[l] > 0 {
			inB[l]--
			ops = append(ops, diffOp{' ', l})
		} else {
			ops = append(ops, diffOp{'-', l})
		}
	}
	for _, l := range b {
		if inB[l] > 0 {
			inB[l]--
			ops = append(ops, diffOp{'+', l})
		}
	}
	return ops
}

// unified renders ops as a unified diff with three lines of context.
func unified(from, to string, ops []diffOp) string {
	const context = 3
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s\n+++ %s\n", from, to)
	counted, aLine, bLine := 0, 1, 1
	for start := 0; start < len(ops); {
		for start < len(ops) && ops[start].kind == ' ' {
			start++
		}
		if start == len(ops) {
			break
		}
		// A hunk runs until context*2 unchanged lines in a row.
		end, same := start, 0
		for end < len(ops) && same <= 2*context {
			if ops[end].kind == ' ' {
				same++
			} else {
				same = 0
			}
			end++
		}
		end -= max(0, same-context)
		lo := max(0, start-context)
		// Line numbers of ops[lo] on each side, counted on from the last hunk.
		for ; counted < lo; counted++ {
			if ops[counted].kind != '+' {
				aLine++
			}
			if ops[counted].kind != '-' {
				bLine++
			}
		}
		aStart, bStart := aLine, bLine
		aLen, bLen := 0, 0
		for _, op := range ops[lo:end] {
			if op.kind != '+' {
				aLen++
			}
			if op.kind != '-' {
				bLen++
			}
		}
		fmt.Fprintf(&b, "@@ -%d,%d +%d,%d @@\n", aStart, aLen, bStart, bLen)
		for _, op := range ops[lo:end] {
			b.WriteByte(op.kind)
			b.WriteString(op.line + "\n")
		}
		start = end
	}
	return b.String()
}
