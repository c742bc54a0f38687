package redirect

import (
	"fmt"
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

// lcsCells bounds the table of the longest-common-subsequence diff: past it
// (about 2,000 lines on each side that differ), the lines in between are
// compared in one pass instead.
const lcsCells = 4 << 20

// diffLines is a line diff: the lines both sides start and end with are the
// same, and what differs in between is a longest-common-subsequence diff, or,
// when that table would pass lcsCells, a one-pass diff (linear in the lines;
// its script may be longer than the shortest). A configuration with thousands
// of CIDRs, ports or ids renders thousands of lines per family: before this,
// `detour check` built an n×m table for them (431 MB and 5 s for 5,000 lines
// per family, in sync; quadratic beyond).
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
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	if len(ma)*len(mb) <= lcsCells {
		ops = lcsDiff(ops, ma, mb)
	} else {
		ops = passDiff(ops, ma, mb)
	}
	for _, l := range a[len(a)-suf:] {
		ops = append(ops, diffOp{' ', l})
	}
	return ops
}

// lcsDiff appends the longest-common-subsequence diff of a and b to ops.
func lcsDiff(ops []diffOp, a, b []string) []diffOp {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < n && j < m {
		switch {
		case a[i] == b[j]:
			ops = append(ops, diffOp{' ', a[i]})
			i, j = i+1, j+1
		case lcs[i+1][j] >= lcs[i][j+1]:
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

// passDiff appends a diff of a and b made in one pass: equal lines are kept,
// a line the other side no longer holds is removed or added, and a line both
// still hold further on (moved) is removed here and added where it stands.
// Every '-' is a line of a, every '+' one of b, each in its order.
func passDiff(ops []diffOp, a, b []string) []diffOp {
	restA, restB := make(map[string]int, len(a)), make(map[string]int, len(b))
	for _, l := range a {
		restA[l]++
	}
	for _, l := range b {
		restB[l]++
	}
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] == b[j]:
			ops = append(ops, diffOp{' ', a[i]})
			restA[a[i]]--
			restB[b[j]]--
			i, j = i+1, j+1
		case restB[a[i]] == 0 || restA[b[j]] > 0:
			ops = append(ops, diffOp{'-', a[i]})
			restA[a[i]]--
			i++
		default:
			ops = append(ops, diffOp{'+', b[j]})
			restB[b[j]]--
			j++
		}
	}
	for ; i < len(a); i++ {
		ops = append(ops, diffOp{'-', a[i]})
	}
	for ; j < len(b); j++ {
		ops = append(ops, diffOp{'+', b[j]})
	}
	return ops
}

// unified renders ops as a unified diff with three lines of context.
func unified(from, to string, ops []diffOp) string {
	const context = 3
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s\n+++ %s\n", from, to)
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
		aStart, bStart := 1, 1
		for _, op := range ops[:lo] {
			if op.kind != '+' {
				aStart++
			}
			if op.kind != '-' {
				bStart++
			}
		}
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
