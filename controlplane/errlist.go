package controlplane

import (
	"errors"
	"fmt"

	"github.com/detour-mesh/detour/internal/excerpt"
	"github.com/detour-mesh/detour/redirect"
)

// MaxReportedErrors bounds the errors one invalid mesh reports: the first ones
// are kept in full, the rest are counted. A file with a million bad entries
// gives an error of a few kilobytes, not a log line (and a /debug/nodes
// lastError) of tens of megabytes.
const MaxReportedErrors = 20

// errorList keeps the first MaxReportedErrors errors added to it and counts
// the others.
type errorList struct {
	errs []error
	more int
}

// add adds err; an errors.Join of several is added one by one.
func (l *errorList) add(err error) {
	if err == nil {
		return
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			l.add(e)
		}
		return
	}
	if len(l.errs) < MaxReportedErrors {
		l.errs = append(l.errs, shorten(err))
		return
	}
	l.more++
}

func (l *errorList) len() int { return len(l.errs) + l.more }

// err joins the kept errors and, when some were only counted, a last line
// saying how many. It is nil when nothing was added. It matches whatever the
// kept errors match (redirect.ErrInvalid for field errors).
func (l *errorList) err() error {
	if len(l.errs) == 0 {
		return nil
	}
	if l.more == 0 {
		return errors.Join(l.errs...)
	}
	return errors.Join(append(l.errs[:len(l.errs):len(l.errs)], &moreErrors{n: l.more})...)
}

// moreErrors stands for the errors an errorList counted but did not keep.
type moreErrors struct{ n int }

func (e *moreErrors) Error() string {
	return fmt.Sprintf("… and %d more errors (only the first %d are shown)", e.n, MaxReportedErrors)
}

// maxValueText bounds the field and the value a kept error quotes: a
// 3 MB value is shown as its first bytes and its size.
const maxValueText = 200

// shorten cuts a *redirect.FieldError's field and value to maxValueText.
func shorten(err error) error {
	fe, ok := err.(*redirect.FieldError)
	if !ok || len(fe.Field) <= maxValueText && len(fe.Value) <= maxValueText {
		return err
	}
	c := *fe
	c.Field, c.Value = cut(c.Field), cut(c.Value)
	return &c
}

func cut(s string) string { return excerpt.Of(s, maxValueText) }
