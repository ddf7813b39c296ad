(* ::Package:: *)

(* relay's kernel hook: Dynamic, palettes and interrupts over SSH.

   relay passes this file to controller kernels with -initfile, which runs in addition to the
   usual init.m files (the init.m reference page), after writing it to ~/.cache/relay/<hash>/ on
   the kernel's host (relay/ssh/hookfile.py). It talks to the relay daemon through the control
   channel named in the kernel's environment, following the protocol defined once in
   relay/lite/hook.py (one request per TCP connection; single-use tokens):

       request  RELAY1 <token> <op> <argument>\n
       reply    OK <next-token> <result>\n   or   ERR <next-token|-> <message>\n

   Old method (up to 11.0): the kernel creates the service and preemptive links itself with
   MathLink`CreateFrontEndLink[] and sends their names to the front end. This file redefines
   CreateFrontEndLink to listen on a pair of ports that relay has just reserved on the front
   end's 127.0.0.1 and tunnels to the same ports here (listen-pair), asking again if a port is
   taken on this host (release). Never an unchecked guess.

   New method (11.1 and later): the front end listens and sends the kernel code that connects to
   its two links with LinkCreate[name, LinkMode -> Connect] inside MathLink`CreateFrontEndLinks[]
   (docs/topology.md section 3). While that set-up runs, and until it has made its two links,
   such a LinkCreate for a name on the front end's side (frontEndNameQ, relay.lite.hook's rule) first
   asks relay for remote forwards (callback) and connects to the rewritten name instead. Any
   other connect-mode name in the set-up is left alone and reported to relay (skipped). After
   that, user code's LinkCreate is never touched.

   Every request is bounded by $RELAY_HOOK_TIMEOUT seconds. When SocketConnect is missing,
   fails or stays silent, the same line goes once more through bash's /dev/tcp (relay.lite.hook's
   BASH_TRANSPORT, which bounds its own read). When relay cannot be reached the kernel says so
   once and goes on: the old method listens as it would without relay (as Tunnel's tunnel.m
   did), the new method's link is $Failed (never the same name on this host's loopback, which
   may be anyone's port).

   Versions: everything used outside the socket transport is in 10.0 (the README's range);
   the socket transport is used only when all of $socketFunctions exist (11.2 and later), and
   a test checks every System symbol here against its first version.

   Context hygiene: nothing is exported and RelayHook` is taken off $ContextPath, so no name of
   the hook can meet a user's. RelayHook`$Method is readable by its full name. *)

BeginPackage["RelayHook`"]

Begin["`Private`"]

(* -- pure: the protocol and the rules (relay/lite/hook.py has the Python twins) --------------- *)

requestLine[token_String, op_String, argument_String] :=
  StringJoin["RELAY1 ", token, " ", op, " ", If[argument === "", "-", argument], "\n"]

(* The daemon writes single spaces (relay.lite.hook.format_reply), so splitting on " " and joining
   the rest again gives the result back exactly. *)
parseReply[line_String] := Module[{parts = StringSplit[StringTrim[line], " "]},
  If[Length[parts] < 2 || !MemberQ[{"OK", "ERR"}, parts[[1]]],
    {False, None, "malformed reply"},
    {parts[[1]] === "OK", If[parts[[2]] === "-", None, parts[[2]]],
     joinWords[Drop[parts, 2]]}
  ]
]

(* StringRiffle is 10.1; this is 10.0 (and Mathics3's Riffle differs on one element) *)
joinWords[{}] = "";
joinWords[words_List] := Fold[StringJoin[#1, " ", #2] &, First[words], Rest[words]]

chooseMethod[version_, override_String] := Which[
  override === "old", "old",
  override === "new", "new",
  version >= 11.1, "new",
  True, "old"
]

digitsQ[word_String] := StringMatchQ[word, DigitCharacter ..]
digitsQ[___] := False

routableHostQ[host_String, frontEndHost_String] :=
  MemberQ[{frontEndHost, "localhost", "::1"}, host] ||
    StringMatchQ[host, "127." ~~ DigitCharacter .. ~~ "." ~~ DigitCharacter .. ~~ "." ~~
                       DigitCharacter ..]

(* relay.lite.hook.front_end_name: P1@H1,P2@H2 (relay.lite.hook.NAME_SHAPE) with both hosts on the
   front end's side *)
$nameShape = "[0-9]+@[^@,]+,[0-9]+@[^@,]+";
frontEndNameQ[name_String, frontEndHost_String] :=
  StringMatchQ[name, RegularExpression[$nameShape]] &&
    With[{parts = StringSplit[name, {"@", ","}]},
      routableHostQ[parts[[2]], frontEndHost] && routableHostQ[parts[[4]], frontEndHost]]
frontEndNameQ[___] := False

(* relay.lite.hook.loggable_name: one word of a request line *)
oneWord[name_String] := If[name === "", "-",
  FromCharacterCode[Replace[ToCharacterCode[StringTake[name, Min[200, StringLength[name]]]],
    c_Integer /; !(32 < c <= 126) -> 95, {1}]]]

timeoutSeconds[text_] := If[StringQ[text] && StringMatchQ[text, DigitCharacter ..] &&
    0 < FromDigits[text] <= 600, FromDigits[text], 10]

(* -- transport ------------------------------------------------------------------------- *)

$port = Environment["RELAY_HOOK_PORT"];
$token = Environment["RELAY_HOOK_TOKEN"];
$frontEndHost = Environment["RELAY_FRONTEND_HOST"];
$timeout = timeoutSeconds[Environment["RELAY_HOOK_TIMEOUT"]];

(* relay.lite.hook.BASH_TRANSPORT, the same text: the Mathics3 test compares them *)
$bashTransport = "IFS= read -r line || exit 3; exec 3<>\"/dev/tcp/127.0.0.1/$1\" || exit 4; printf \"%s\\n\" \"$line\" >&3; IFS= read -r -t \"$2\" reply <&3 || exit 5; printf \"%s\\n\" \"$reply\"";

(* The socket transport needs all of these (SocketReadyQ, with its time limit, is from 11.2).
   They are named by strings and called through Symbol, so an older kernel reading this file
   creates none of them and socketsQ stays honest. *)
$socketFunctions = {"SocketConnect", "SocketObject", "SocketReadyQ", "SocketReadMessage"};

socketsQ[] := And @@ (Length[Names["System`" <> #]] > 0 & /@ $socketFunctions)

General::relayhook = "relay's Dynamic hook: `1`";

$reported = False;

(* One clear message per kernel session when relay cannot be reached. *)
unreachable[] := (
  If[!$reported,
    $reported = True;
    Message[General::relayhook, StringJoin[
      "the relay daemon did not answer on 127.0.0.1:", ToString[$port], " within ",
      ToString[$timeout], " s; Dynamic and palettes will not work in this kernel ",
      "(run relay status on the front end's machine)"]]];
  $Failed
)

(* Reads until the reply's newline, for at most $timeout seconds in all. *)
socketSend[line_String] := Module[{socket, deadline, bytes = {}, chunk, end},
  socket = Quiet[Symbol["System`SocketConnect"][{"127.0.0.1", FromDigits[$port]}, "TCP"]];
  If[Head[socket] =!= Symbol["System`SocketObject"], Return[$Failed]];
  deadline = AbsoluteTime[] + $timeout;
  Quiet[WriteString[socket, line]];
  While[!MemberQ[bytes, 10] && AbsoluteTime[] < deadline &&
      TrueQ[Quiet[Symbol["System`SocketReadyQ"][socket, deadline - AbsoluteTime[]]]],
    chunk = Quiet[Normal[Symbol["System`SocketReadMessage"][socket]]];
    If[!ListQ[chunk] || chunk === {}, Break[]];  (* closed, or not bytes *)
    bytes = Join[bytes, chunk]
  ];
  Quiet[Close[socket]];
  end = Position[bytes, 10, {1}, 1];
  If[end === {}, $Failed, FromCharacterCode[Take[bytes, end[[1, 1]]], "UTF-8"]]
]

bashSend[line_String] := Module[{result},
  result = Quiet[RunProcess[{"/bin/bash", "-c", $bashTransport, "relay-hook", $port,
      ToString[$timeout]}, All, line]];
  If[Head[result] === Association && result["ExitCode"] === 0, result["StandardOutput"], $Failed]
]

send[line_String] := Module[{reply = If[socketsQ[], socketSend[line], $Failed]},
  If[StringQ[reply], reply, bashSend[line]]
]

request[op_String, argument_String] := Module[{reply, parsed},
  If[!StringQ[$token] || !StringQ[$port] || !digitsQ[$port], Return[unreachable[]]];
  reply = send[requestLine[$token, op, argument]];
  If[!StringQ[reply], Return[unreachable[]]];
  parsed = parseReply[reply];
  If[StringQ[parsed[[2]]], $token = parsed[[2]]];
  If[TrueQ[parsed[[1]]], parsed[[3]], Message[General::relayhook, parsed[[3]]]; $Failed]
]

(* -- old method: the kernel listens, on ports relay reserved on the front end's side ------- *)

oldFrontEndLink[] := Module[{name, link = $Failed, tries = 0},
  While[tries < 5 && Head[link] =!= LinkObject,
    tries++;
    name = request["listen-pair", "-"];
    If[!StringQ[name], Break[]];
    link = Quiet[LinkCreate[name, LinkMode -> Listen, LinkProtocol -> "TCPIP"]];
    If[Head[link] =!= LinkObject, request["release", name]]
  ];
  (* relay could not help: listen as a kernel without relay would, as tunnel.m fell back *)
  If[Head[link] =!= LinkObject, link = LinkCreate[LinkMode -> Listen, LinkProtocol -> "TCPIP"]];
  If[Head[link] === LinkObject, MathLink`LinkSetPrintFullSymbols[link, True]];
  link
]

(* -- new method: the front end's connect-mode links go through relay's forwards ----------- *)

$inHook = False;
$settingUp = False;
$linked = 0;

connectModeQ[opts_List] := MemberQ[Flatten[opts], (LinkMode -> Connect) | (LinkMode -> "Connect")]

(* Inside MathLink`CreateFrontEndLinks, or before the front end's two links exist. *)
interceptQ[] := TrueQ[$settingUp] || $linked < 2

intercept[name_String, opts_List] := Block[{$inHook = True, rewritten},
  If[frontEndNameQ[name, $frontEndHost],
    rewritten = request["callback", name];
    If[StringQ[rewritten], $linked++; LinkCreate[rewritten, Sequence @@ opts], $Failed],
    request["skipped", oneWord[name]];
    LinkCreate[name, Sequence @@ opts]
  ]
]

installNewMethod[] := Module[{protected},
  Unprotect[LinkCreate];
  LinkCreate[name_String, opts___] /;
      !TrueQ[$inHook] && StringQ[$frontEndHost] && connectModeQ[{opts}] && interceptQ[] :=
    intercept[name, {opts}];
  Protect[LinkCreate];
  (* Open the window around the front end's set-up: a rule put first, so it wraps whatever
     definition the kernel has (built in or rules of its own). *)
  (* A Locked symbol refuses this quietly; the window is then the first two links alone. *)
  protected = MemberQ[Attributes[MathLink`CreateFrontEndLinks], Protected];
  Quiet[
    Unprotect[MathLink`CreateFrontEndLinks];
    DownValues[MathLink`CreateFrontEndLinks] = Prepend[DownValues[MathLink`CreateFrontEndLinks],
      HoldPattern[MathLink`CreateFrontEndLinks[args___]] :>
        Block[{$settingUp = True}, MathLink`CreateFrontEndLinks[args]] /; !TrueQ[$settingUp]];
    If[protected, Protect[MathLink`CreateFrontEndLinks]]
  ];
]

installOldMethod[] := (
  Unprotect[MathLink`CreateFrontEndLink];
  MathLink`CreateFrontEndLink[] := oldFrontEndLink[];
  Protect[MathLink`CreateFrontEndLink];
)

End[]

RelayHook`$Method = RelayHook`Private`chooseMethod[$VersionNumber,
  Replace[Environment["RELAY_DYNAMIC_METHOD"], Except[_String] -> "auto"]];

If[StringQ[Environment["RELAY_HOOK_TOKEN"]],
  If[RelayHook`$Method === "new", RelayHook`Private`installNewMethod[],
                                  RelayHook`Private`installOldMethod[]]
];

EndPackage[]

$ContextPath = DeleteCases[$ContextPath, "RelayHook`"];
