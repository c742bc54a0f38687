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

// diffLines is a longest-common-subsequence line diff; rule sets are small.
func diffLines(a, b []string) []diffOp {
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
	var ops []diffOp
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
