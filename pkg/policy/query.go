package policy

// Query answers `meshd policy test`: whether p accepts a new flow from src
// (tag:NAME, peer:NAME or one address) to dst ("HOST:PORT" as a test's
// accept entry writes it; HOST alone for icmp) over proto, among the
// peers of d. rule is the index of the first rule that accepts the flow,
// -1 when none does or when p is nil ("no policy", which accepts
// everything). Names are resolved as Check resolves a test's: an unknown
// tag or peer is an *Error.
func (p *Policy) Query(d *Directory, src, dst string, proto Proto) (rule int, ok bool, err error) {
	sel, prob := parseHost(src)
	if prob != nil {
		return -1, false, &Error{Index: -1, Field: "src", Value: src, Err: prob.err, Detail: prob.detail}
	}
	from, e := d.resolve(sel)
	if e != nil {
		e.Field, e.Value = "src", src
		return -1, false, e
	}
	tg, prob := parseTarget(dst, proto)
	if prob != nil {
		return -1, false, &Error{Index: -1, Field: "dst", Value: dst, Err: prob.err, Detail: prob.detail}
	}
	to, e := d.resolve(tg.Host)
	if e != nil {
		e.Field, e.Value = "dst", dst
		return -1, false, e
	}
	rule, ok = p.Match(from, to, proto, tg.Port)
	return rule, ok, nil
}
