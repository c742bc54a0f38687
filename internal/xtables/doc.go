// Package xtables reads iptables-save text and follows one packet through it,
// the way the kernel's xtables would: the built-in chain of a hook, in each
// table the hook passes (raw, mangle, nat), and every user chain a matching rule
// jumps to. It answers `detour explain`'s kernel question — what do the rules
// that are really installed do with this connection, and which rule decides —
// for every rule in the tables, detour's or another tool's.
//
// It is pure: it parses text, runs nothing and needs no privileges. It knows
// the matches and targets detour's rules use and the common ones other tools
// put in front of them; a rule that uses anything else, or a match it cannot
// decide for the packet described (a rate limit, an interface it was not told),
// makes the evaluation say so ("cannot tell: rule X uses Y") instead of
// guessing — unless the rule's outcome cannot change the answer (a LOG rule).
//
// It must not import other detour packages: redirect's backends adapt to it.
package xtables
