(* ::Package:: *)

(* relay's kernel hook: Dynamic, palettes and interrupts over SSH.

   relay passes this file to controller kernels with -initfile, after writing it to
   ~/.cache/relay/<hash>/ on the kernel's host (relay/ssh/hookfile.py). It talks to the relay daemon through the
   control channel named in the kernel's environment, following the protocol defined once in
   relay/hook.py (one request per TCP connection; single-use tokens):

       request  RELAY1 <token> <op> <argument>\n
       reply    OK <next-token> <result>\n   or   ERR <next-token|-> <message>\n

   Old method (up to 11.0): the kernel creates the service and preemptive links itself with
   MathLink`CreateFrontEndLink[] and sends their names to the front end. This file redefines
   CreateFrontEndLink to listen on a pair of ports that relay has just reserved on the front
   end's 127.0.0.1 and tunnels to the same ports here (listen-pair), asking again if a port is
   taken on this host (release). Never an unchecked guess.

   New method (11.1 and later): the front end listens and sends the kernel code that connects to
   its two links with LinkCreate[name, LinkMode -> Connect]. This file makes such a LinkCreate,
   for a name on the front end's host, first ask relay for remote forwards (callback) and
   connect to the rewritten name instead.

   The method follows $VersionNumber unless the host's dynamic_method says otherwise.
   SocketConnect and ReadString carry the requests (10.2 and later: SocketObject dates from
   2015); older kernels fall back to bash's /dev/tcp through RunProcess. *)

BeginPackage["RelayHook`"]

RelayHook`requestLine::usage = "requestLine[token, op, argument] is the request line of relay's hook protocol."
RelayHook`parseReply::usage = "parseReply[line] gives {ok, nextToken, result}."
RelayHook`chooseMethod::usage = "chooseMethod[version, override] gives \"old\" or \"new\"."
RelayHook`frontEndNameQ::usage = "frontEndNameQ[name, host] is True for a TCPIP link name whose endpoints are on the front end's host."
RelayHook`$Method::usage = "The front-end link method relay's hook uses in this kernel."

Begin["`Private`"]

requestLine[token_String, op_String, argument_String] :=
  StringJoin["RELAY1 ", token, " ", op, " ", If[argument === "", "-", argument], "\n"]

(* The daemon writes single spaces (relay.hook.format_reply), so splitting on " " and joining
   the rest again gives the result back exactly. *)
parseReply[line_String] := Module[{parts = StringSplit[StringTrim[line], " "]},
  If[Length[parts] < 2 || !MemberQ[{"OK", "ERR"}, parts[[1]]],
    {False, None, "malformed reply"},
    {parts[[1]] === "OK", If[parts[[2]] === "-", None, parts[[2]]],
     StringRiffle[Drop[parts, 2], " "]}
  ]
]

chooseMethod[version_, override_String] := Which[
  override === "old", "old",
  override === "new", "new",
  version >= 11.1, "new",
  True, "old"
]

frontEndNameQ[name_String, host_String] := Module[{parts = StringSplit[name, {"@", ","}]},
  Length[parts] === 4 && parts[[2]] === host && parts[[4]] === host &&
    StringMatchQ[parts[[1]], DigitCharacter ..] && StringMatchQ[parts[[3]], DigitCharacter ..]
]
frontEndNameQ[___] := False

(* -- transport ------------------------------------------------------------------------- *)

$port = Environment["RELAY_HOOK_PORT"];
$token = Environment["RELAY_HOOK_TOKEN"];
$frontEndHost = Environment["RELAY_FRONTEND_HOST"];

General::relayhook = "relay's Dynamic hook: `1`";

socketSend[line_String] := Module[{socket, reply},
  socket = SocketConnect[{"127.0.0.1", ToExpression[$port]}, "TCP"];
  If[Head[socket] =!= SocketObject, Return[$Failed]];
  WriteString[socket, line];
  reply = ReadString[socket];  (* relay closes the connection after its one reply line *)
  Close[socket];
  reply
]

bashSend[line_String] := Module[{result},
  result = RunProcess[{"/bin/bash", "-c",
      "exec 3<>/dev/tcp/127.0.0.1/" <> $port <> " && cat >&3 && cat <&3"}, All, line];
  If[AssociationQ[result], result["StandardOutput"], $Failed]
]

send[line_String] := If[Length[Names["System`SocketConnect"]] > 0, socketSend[line], bashSend[line]]

request[op_String, argument_String] := Module[{reply, parsed},
  If[!StringQ[$token] || !StringQ[$port], Message[General::relayhook, "no control channel"]; Return[$Failed]];
  reply = send[requestLine[$token, op, argument]];
  If[!StringQ[reply], Message[General::relayhook, "the relay daemon did not answer"]; Return[$Failed]];
  parsed = parseReply[reply];
  If[StringQ[parsed[[2]]], $token = parsed[[2]]];
  If[TrueQ[parsed[[1]]], parsed[[3]], Message[General::relayhook, parsed[[3]]]; $Failed]
]

(* -- old method: the kernel listens, on ports relay reserved on the front end's side ------- *)

oldFrontEndLink[] := Module[{name, link = $Failed, tries = 0},
  While[tries < 5 && Head[link] =!= LinkObject,
    tries++;
    name = request["listen-pair", "-"];
    If[!StringQ[name], Return[$Failed]];
    link = Quiet[LinkCreate[name, LinkMode -> Listen, LinkProtocol -> "TCPIP"]];
    If[Head[link] =!= LinkObject, request["release", name]]
  ];
  If[Head[link] === LinkObject, MathLink`LinkSetPrintFullSymbols[link, True]];
  link
]

(* -- new method: connect-mode links to the front end go through relay's forwards ---------- *)

$inHook = False;

connectModeQ[opts_List] := MemberQ[Flatten[{opts}], (LinkMode -> Connect) | (LinkMode -> "Connect")]

installNewMethod[] := (
  Unprotect[LinkCreate];
  LinkCreate[name_String, opts___] /; !TrueQ[$inHook] && connectModeQ[{opts}] &&
      StringQ[$frontEndHost] && frontEndNameQ[name, $frontEndHost] :=
    Block[{$inHook = True, rewritten = request["callback", name]},
      If[StringQ[rewritten], LinkCreate[rewritten, opts], $Failed]];
  Protect[LinkCreate];
)

installOldMethod[] := (
  Unprotect[MathLink`CreateFrontEndLink];
  MathLink`CreateFrontEndLink[] := oldFrontEndLink[];
  Protect[MathLink`CreateFrontEndLink];
)

End[]

RelayHook`$Method = RelayHook`chooseMethod[$VersionNumber,
  Replace[Environment["RELAY_DYNAMIC_METHOD"], Except[_String] -> "auto"]];

If[StringQ[Environment["RELAY_HOOK_TOKEN"]],
  If[RelayHook`$Method === "new", RelayHook`Private`installNewMethod[],
                                  RelayHook`Private`installOldMethod[]]
];

EndPackage[]
